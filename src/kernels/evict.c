/* evict.c - eviction keys: merge, selection, near-ties (see evict.h). */
#include <stdlib.h>
#include <string.h>
#include "kernels/evict.h"

void kv_evict_merge(kv_evkey *inout, const kv_evkey *in, int L)
{
    kv_evkey tmp[64], *m = L <= 64 ? tmp : malloc(sizeof(kv_evkey) * (size_t)L);
    if (!m) { /* no scratch: merge in place from the top (slower, same result) */
        for (int j = 0; j < L; j++) {
            kv_evkey k = in[j];
            if (!kv_evkey_less(k, inout[L - 1])) break;
            int i = L - 1;
            while (i > 0 && kv_evkey_less(k, inout[i - 1])) inout[i] = inout[i - 1], i--;
            inout[i] = k;
        }
        return;
    }
    int a = 0, b = 0;
    for (int i = 0; i < L; i++) m[i] = kv_evkey_less(in[b], inout[a]) ? in[b++] : inout[a++];
    memcpy(inout, m, sizeof(kv_evkey) * (size_t)L);
    if (m != tmp) free(m);
}

static void swap(kv_evkey *a, kv_evkey *b)
{
    kv_evkey t = *a;
    *a = *b;
    *b = t;
}

/* Rearrange keys[lo..hi] so that the k-th lowest sits at k, lower ones
 * before it (Hoare-style quickselect, median-of-three pivot). */
static void select_kth(kv_evkey *x, size_t lo, size_t hi, size_t k)
{
    while (hi > lo) {
        size_t mid = lo + (hi - lo) / 2;
        if (kv_evkey_less(x[mid], x[lo])) swap(&x[mid], &x[lo]);
        if (kv_evkey_less(x[hi], x[lo])) swap(&x[hi], &x[lo]);
        if (kv_evkey_less(x[hi], x[mid])) swap(&x[hi], &x[mid]);
        kv_evkey piv = x[mid];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (kv_evkey_less(x[i], piv)) i++;
            while (kv_evkey_less(piv, x[j])) j--;
            if (i <= j) {
                swap(&x[i], &x[j]);
                i++;
                if (j == 0) break;
                j--;
            }
        }
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return;
    }
}

static int cmp_key(const void *a, const void *b)
{
    kv_evkey x = *(const kv_evkey *)a, y = *(const kv_evkey *)b;
    return kv_evkey_less(x, y) ? -1 : kv_evkey_less(y, x);
}

void kv_evict_lowest(kv_evkey *keys, size_t n, int L, kv_evkey *out)
{
    size_t k = n < (size_t)L ? n : (size_t)L;
    if (k < n && k > 0) select_kth(keys, 0, n - 1, k - 1);
    qsort(keys, k, sizeof *keys, cmp_key);
    memcpy(out, keys, sizeof *keys * k);
    for (size_t i = k; i < (size_t)L; i++) out[i] = KV_EVKEY_NONE;
}

int kv_evict_near_tie(kv_evkey cut, kv_evkey next)
{
    if (!isfinite(next.score) || next.score == cut.score) return 0;
    double big = fabs(next.score) > fabs(cut.score) ? fabs(next.score) : fabs(cut.score);
    return fabs(next.score - cut.score) <= KV_EVICT_TIE_REL * big;
}
