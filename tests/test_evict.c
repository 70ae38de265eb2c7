/* test_evict.c - kernels/evict.h's selections against a full sort.
 *
 * The reference sorts every eligible (score, index) pair with qsort and
 * its own lexicographic comparison (written here, not evict.c's), then
 * takes the first L and pads with KV_EVKEY_NONE.  kv_evict_lowest_cols
 * must give those keys in that order, each at[j] a row holding out[j]
 * (-1 for padding), for: scores drawn from a few values (ties decided by
 * the index), all equal, distinct; rows below `from` skipped; L = 1, L
 * below, at and above the eligible count; n = 0; +inf scores (an
 * overflowed key).  kv_evict_lowest (copying selection) must agree. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/evict.h"
#include "testutil.h"

static int ref_cmp(const void *a, const void *b)
{
    const kv_evkey *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int same_key(kv_evkey a, kv_evkey b) { return a.score == b.score && a.idx == b.idx; } /* inf == inf */

/* one case: n rows, scores from `kinds` values (0: distinct), indices a
 * shuffled range from base, rows with index < from not eligible */
static void one_case(kv_rng *g, size_t n, int kinds, int L, int64_t from, int with_inf)
{
    double *score = malloc(sizeof(double) * (n + 1));
    int64_t *idx = malloc(sizeof(int64_t) * (n + 1)), *at = malloc(sizeof(int64_t) * (size_t)L);
    kv_evkey *ref = malloc(sizeof(kv_evkey) * (n + (size_t)L + 1)), *out = malloc(sizeof(kv_evkey) * (size_t)L);
    kv_evkey *out2 = malloc(sizeof(kv_evkey) * (size_t)L), *copy = malloc(sizeof(kv_evkey) * (n + 1));
    for (size_t i = 0; i < n; i++) {
        idx[i] = (int64_t)i;
        score[i] = kinds ? (double)kv_rng_below(g, (uint64_t)kinds) - 1.5 : kv_rng_normal(g);
        if (with_inf && kv_rng_below(g, 8) == 0) score[i] = INFINITY;
    }
    for (size_t i = n; i > 1; i--) { /* shuffle the indices over the rows */
        size_t j = (size_t)kv_rng_below(g, i);
        int64_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (idx[i] >= from) ref[m++] = (kv_evkey){ score[i], (double)idx[i] };
    memcpy(copy, ref, sizeof(kv_evkey) * m);
    qsort(ref, m, sizeof *ref, ref_cmp);
    for (size_t j = m; j < (size_t)L; j++) ref[j] = KV_EVKEY_NONE;
    int rc = kv_evict_lowest_cols(score, idx, n, from, L, out, at);
    CHECK(rc == 0, "kv_evict_lowest_cols returned %d", rc);
    kv_evict_lowest(copy, m, L, out2);
    int bad = 0, bad2 = 0, badat = 0;
    for (int j = 0; j < L; j++) {
        bad += !same_key(out[j], ref[j]);
        bad2 += !same_key(out2[j], ref[j]);
        if ((size_t)j < m)
            badat += at[j] < 0 || at[j] >= (int64_t)n || score[at[j]] != out[j].score ||
                     (double)idx[at[j]] != out[j].idx;
        else badat += at[j] != -1;
    }
    CHECK(bad == 0, "cols: %d of %d keys differ from the sort (n %zu kinds %d from %lld)", bad, L, n, kinds,
          (long long)from);
    CHECK(bad2 == 0, "kv_evict_lowest: %d of %d keys differ from the sort (n %zu kinds %d)", bad2, L, n, kinds);
    CHECK(badat == 0, "cols: %d rows at[] do not hold their keys (n %zu L %d)", badat, n, L);
    free(score);
    free(idx);
    free(at);
    free(ref);
    free(out);
    free(out2);
    free(copy);
}

int main(void)
{
    kv_rng g;
    kv_rng_seed(&g, 7, 0, 0);
    const size_t ns[] = { 0, 1, 5, 17, 64, 1000, 6553 };
    const int Ls[] = { 1, 2, 17, 64, 1200 };
    const int kinds[] = { 0, 1, 3, 50 };
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t b = 0; b < sizeof Ls / sizeof Ls[0]; b++)
            for (size_t c = 0; c < sizeof kinds / sizeof kinds[0]; c++)
                for (int from = 0; from <= 4; from += 4)
                    one_case(&g, ns[a], kinds[c], Ls[b], from, (int)(a + b + c) % 3 == 0);
    return kv_test_result("test_evict");
}
