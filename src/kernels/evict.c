/* evict.c - eviction keys: merge, selection, near-ties (see evict.h). */
#include <stdlib.h>
#include <string.h>
#include "core/kverr.h"
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

/* a key and its row, in kv_evict_lowest_cols's max-heap */
typedef struct {
    kv_evkey k;
    int64_t at;
} lowent;

static void low_sift(lowent *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && kv_evkey_less(h[m].k, h[l].k)) m = l;
        if (r < n && kv_evkey_less(h[m].k, h[r].k)) m = r;
        if (m == i) return;
        lowent t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static int cmp_low(const void *a, const void *b) { return cmp_key(&((const lowent *)a)->k, &((const lowent *)b)->k); }

int kv_evict_lowest_cols(const double *score, const int64_t *idx, size_t n, int64_t from, int L, kv_evkey *out,
                         int64_t *at)
{
    if (L <= 0) return KV_OK;
    lowent *h = malloc(sizeof *h * (size_t)L);
    if (!h) return KV_EINTERNAL;
    int k = 0;
    size_t i = 0;
    for (; i < n && k < L; i++) /* the first L candidates fill the heap */
        if (idx[i] >= from) h[k++] = (lowent){ { score[i], (double)idx[i] }, (int64_t)i };
    for (int j = k / 2 - 1; j >= 0 && k == L; j--) low_sift(h, L, j);
    for (; i < n; i++) { /* then a row replaces the heap's highest only when lower */
        kv_evkey e = { score[i], (double)idx[i] };
        if (idx[i] < from || !kv_evkey_less(e, h[0].k)) continue;
        h[0] = (lowent){ e, (int64_t)i };
        low_sift(h, L, 0);
    }
    qsort(h, (size_t)k, sizeof *h, cmp_low);
    for (int j = 0; j < L; j++) {
        out[j] = j < k ? h[j].k : KV_EVKEY_NONE;
        if (at) at[j] = j < k ? h[j].at : -1;
    }
    free(h);
    return KV_OK;
}

int kv_evict_near_tie(kv_evkey cut, kv_evkey next)
{
    if (!isfinite(next.score) || next.score == cut.score) return 0;
    double big = fabs(next.score) > fabs(cut.score) ? fabs(next.score) : fabs(cut.score);
    return fabs(next.score - cut.score) <= KV_EVICT_TIE_REL * big;
}
