/* hugemem.c - see hugemem.h */
#include <stdint.h>
#include <sys/mman.h>
#include "core/hugemem.h"

#define HUGE_PAGE ((uintptr_t)2 << 20)

void kv_mem_hugepages(void *p, size_t n)
{
#ifdef MADV_HUGEPAGE
    if (!p || n < 2 * HUGE_PAGE) return;
    uintptr_t a = ((uintptr_t)p + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1), e = ((uintptr_t)p + n) & ~(HUGE_PAGE - 1);
    if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}
