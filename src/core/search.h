/* search.h - sorted arrays of token indices: their order and search.
 *
 * Token indices are kept ascending in many places (held rows, needle
 * positions, a selection's rows): kv_cmp_i64 sorts them (qsort), and
 * "the first one at or above t" is the one search they need. */
#ifndef KVSTREAM_SEARCH_H
#define KVSTREAM_SEARCH_H

#include <stdint.h>

/* The first i in [0, n) with a[i] >= t (n if none); a ascending. */
static inline int64_t kv_lower_i64(const int64_t *a, int64_t n, int64_t t)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < t) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* qsort comparator: int64_t ascending. */
static inline int kv_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

#endif
