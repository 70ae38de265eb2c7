/* hugemem.h - a hint that a large array be backed by huge pages.
 *
 * A method that allocates its whole shard up front (exact, the quantised
 * caches) then fills it token by token takes one page fault per 4 KiB it
 * first touches; on a virtual machine those faults cost more than the copy
 * itself (exact's ingest ran at 0.15-0.35 M tokens/s at d = 64, page
 * faults and first-touch misses taking most of it).  With transparent huge
 * pages on request (Linux "madvise" mode, Debian's default) one fault maps
 * 2 MiB. */
#ifndef KVSTREAM_HUGEMEM_H
#define KVSTREAM_HUGEMEM_H

#include <stddef.h>

/* madvise(MADV_HUGEPAGE) on the 2 MiB-aligned part of [p, p + n) (nothing
 * for arrays under 4 MiB, or where the call is unsupported): a hint, it
 * changes no contents and cannot fail. */
void kv_mem_hugepages(void *p, size_t n);

#endif
