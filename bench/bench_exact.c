/* bench_exact.c - exact attention throughput against the machine's read
 * bandwidth, measured in the same run.
 *
 *   bench_exact [log2_n=20] [d=128] [reps=5]
 *
 * For n tokens of d-dim keys and values (K+V = n*2d*4 bytes: 1 GiB at the
 * defaults) it times, with 1 and 2 OpenMP threads:
 *   probe   a vectorised dot product of K with V: one read of the same bytes
 *   single  one query over all tokens (kv_attn_fold_par)
 *   batch   64 queries in one pass
 * and prints the effective K+V read rate of single passes as a fraction of
 * the probe, and the cost of the 64-query batch relative to 64 single passes.
 * Best of `reps` runs each.  Targets (issue 2): single >= 0.85 of the probe
 * on 2 threads; batch <= 1/4 of 64 singles. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "kernels/partial.h"
#include "core/rng.h"

static double probe(const float *a, const float *b, size_t n, double *sink)
{
    double t0 = omp_get_wtime(), total = 0;
    size_t blk = 1 << 16;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (size_t i = 0; i < n; i += blk) {
        size_t e = i + blk < n ? i + blk : n;
        float s0 = 0;
#pragma omp simd reduction(+ : s0)
        for (size_t k = i; k < e; k++) s0 += a[k] * b[k];
        total += s0;
    }
    *sink += total;
    return omp_get_wtime() - t0;
}

int main(int argc, char **argv)
{
    int lg = argc > 1 ? atoi(argv[1]) : 20, d = argc > 2 ? atoi(argv[2]) : 128, reps = argc > 3 ? atoi(argv[3]) : 5;
    if (lg < 10 || lg > 26 || d < 1 || d > 4096 || reps < 1) {
        fprintf(stderr, "usage: bench_exact [log2_n 10..26] [d] [reps]\n");
        return 2;
    }
    size_t n = (size_t)1 << lg, dv = (size_t)d, nq = 64;
    size_t kv = n * (size_t)d;
    float *K = aligned_alloc(64, kv * sizeof(float)), *V = aligned_alloc(64, kv * sizeof(float));
    float *Q = malloc(nq * (size_t)d * sizeof(float));
    double *st = malloc(nq * KV_PSTATE_LEN(dv) * sizeof(double));
    if (!K || !V || !Q || !st) { fprintf(stderr, "bench_exact: out of memory\n"); return 1; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < kv; i++) {
        K[i] = (float)kv_hash_normal(1, 1, i, 0);
        V[i] = (float)kv_hash_normal(1, 2, i, 0);
    }
    for (size_t i = 0; i < nq * (size_t)d; i++) Q[i] = (float)kv_hash_normal(1, 3, i, 0);
    float scale = 1.0f / sqrtf((float)d);
    double bytes = 2.0 * (double)kv * sizeof(float), sink = 0;
    printf("bench_exact: n = 2^%d, d = dv = %d, K+V = %.2f GiB, best of %d\n", lg, d, bytes / (1 << 30), reps);
    printf("%-8s %-24s %12s %12s %10s\n", "threads", "kernel", "seconds", "GB/s (K+V)", "of probe");
    double single2 = 0, probe2 = 0, batch2 = 0;
    for (int th = 1; th <= 2; th++) {
        omp_set_num_threads(th);
        double tp = 1e30, t1 = 1e30, tb = 1e30;
        for (int r = 0; r < reps; r++) {
            double t = probe(K, V, kv, &sink);
            tp = t < tp ? t : tp;
        }
        for (int r = 0; r < reps; r++) {
            kv_partial_clear(st, (int)dv);
            double t0 = omp_get_wtime();
            kv_attn_fold_par(Q, 1, K, V, n, d, (int)dv, scale, st);
            double t = omp_get_wtime() - t0;
            t1 = t < t1 ? t : t1;
            sink += st[KV_PS_L];
        }
        for (int r = 0; r < (reps + 1) / 2; r++) {
            for (size_t q = 0; q < nq; q++) kv_partial_clear(st + q * KV_PSTATE_LEN(dv), (int)dv);
            double t0 = omp_get_wtime();
            kv_attn_fold_par(Q, (int)nq, K, V, n, d, (int)dv, scale, st);
            double t = omp_get_wtime() - t0;
            tb = t < tb ? t : tb;
            sink += st[KV_PS_L];
        }
        printf("%-8d %-24s %12.4f %12.2f %10s\n", th, "probe (dot K.V)", tp, bytes / tp / 1e9, "1.00");
        printf("%-8d %-24s %12.4f %12.2f %10.2f\n", th, "exact, 1 query", t1, bytes / t1 / 1e9, tp / t1);
        printf("%-8d %-24s %12.4f %12.2f %10s   batch / 64 singles = %.3f (1/%.1f)\n", th, "exact, 64-query batch", tb,
               64 * bytes / tb / 1e9, "-", tb / (64 * t1), 64 * t1 / tb);
        if (th == 2) { single2 = tp / t1; probe2 = bytes / tp / 1e9; batch2 = tb / (64 * t1); }
    }
    printf("summary: 2 threads: single query at %.2f of the probe (%.1f GB/s probe; target >= 0.85): %s; "
           "64-query batch costs %.3f of 64 singles (target <= 0.25): %s\n",
           single2, probe2, single2 >= 0.85 ? "met" : "NOT met", batch2, batch2 <= 0.25 ? "met" : "NOT met");
    if (sink == 12345.678) printf(" ");
    free(K); free(V); free(Q); free(st);
    return 0;
}
