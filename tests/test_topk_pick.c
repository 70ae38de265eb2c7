/* test_topk_pick.c - topk's picker (methods/topk/topk_pick.h) against a
 * sort: the k largest values, rows realising them, the largest left out;
 * with ties, negatives and signed zeros, small k (many buffer cuts) and
 * blocks of several sizes (the vector filter and the one-by-one tail). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include "core/rng.h"
#include "methods/topk/topk_pick.h"
#include "testutil.h"

static int desc(const void *x, const void *y)
{
    float a = *(const float *)x, b = *(const float *)y;
    return (a < b) - (a > b);
}

/* feed a[0..n) in blocks of blk, then compare with the sort */
static void check_one(const float *a, size_t n, size_t k, size_t blk, float *sorted, const char *what)
{
    void *buf = malloc(kv_tk_bytes(k));
    double *sel = malloc(sizeof(double) * (k ? k : 1));
    int64_t *rows = malloc(sizeof(int64_t) * (k ? k : 1)), nrows = -1;
    float out = 0;
    kv_tk_picker p;
    kv_tk_init(&p, buf, k);
    for (size_t r0 = 0; r0 < n; r0 += blk) {
        size_t nt = n - r0 < blk ? n - r0 : blk;
        kv_tk_feed(&p, a + r0, r0, nt, kv_tk_max(a + r0, nt));
    }
    kv_tk_done(&p, (int)k, sel, rows, &nrows, &out);
    for (size_t i = 0; i < n; i++) sorted[i] = a[i];
    qsort(sorted, n, sizeof *sorted, desc);
    int ok = nrows == (int64_t)k;
    for (size_t i = 0; ok && i < k; i++) ok = sel[i] == (double)sorted[i];
    for (size_t i = 0; ok && i < k; i++) ok = rows[i] >= 0 && (size_t)rows[i] < n && (!i || rows[i] > rows[i - 1]);
    float want_out = n > k ? sorted[k] : -INFINITY;
    CHECK(ok, "%s n=%zu k=%zu blk=%zu: the list differs from the sort", what, n, k, blk);
    CHECK(out == want_out, "%s n=%zu k=%zu: left out %g, want %g", what, n, k, (double)out, (double)want_out);
    if (ok) { /* the rows hold the listed values */
        for (size_t i = 0; i < k; i++) sorted[i] = a[rows[i]];
        qsort(sorted, k, sizeof *sorted, desc);
        for (size_t i = 0; i < k; i++) ok &= sel[i] == (double)sorted[i];
        CHECK(ok, "%s n=%zu k=%zu: the rows do not hold the listed values", what, n, k);
    }
    free(buf);
    free(sel);
    free(rows);
}

int main(void)
{
    static const size_t ns[] = { 1, 17, 300, 5000, 40000 }, ks[] = { 1, 3, 64, 700 }, blks[] = { 32, 256, 7 };
    kv_rng seed;
    kv_rng_seed(&seed, 11, 0, 0);
    float *a = malloc(sizeof(float) * 40000), *sorted = malloc(sizeof(float) * 40000);
    for (int kind = 0; kind < 4; kind++)
        for (size_t x = 0; x < sizeof ns / sizeof ns[0]; x++) {
            size_t n = ns[x];
            for (size_t i = 0; i < n; i++) {
                double g = kv_rng_normal(&seed);
                /* 0: Gaussian; 1: few values (ties), with -0 and +0; 2: rising (a cut per block); 3: one value */
                a[i] = kind == 0   ? (float)g
                       : kind == 1 ? (float)((int)kv_rng_below(&seed, 9) - 4) * (kv_rng_below(&seed, 2) ? 1.0f : -1.0f) * 0.5f
                       : kind == 2 ? (float)(1e-3 * (double)i + 0.1 * g)
                                   : -0.0f;
            }
            for (size_t y = 0; y < sizeof ks / sizeof ks[0]; y++)
                for (size_t z = 0; z < sizeof blks / sizeof blks[0]; z++) {
                    size_t k = ks[y] < n ? ks[y] : n;
                    static const char *names[] = { "gaussian", "ties", "rising", "constant" };
                    check_one(a, n, k, blks[z], sorted, names[kind]);
                }
        }
    free(a);
    free(sorted);
    return kv_test_result("test_topk_pick");
}
