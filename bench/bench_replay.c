/* bench_replay.c - queries spread over the stream against queries all at its
 * end, with the attention kernels directly (issue 14).
 *
 *   bench_replay [log2_n=16] [d=128] [queries=256] [batch=64] [reps=5]
 *
 * n tokens of d-dim keys and values, m queries in batches of B as replay
 * makes them.  "spread": query j sees the first ceil((j+1) n / m) tokens
 * (kvstream gen's placement); "end": every query sees all n.  Times, best of
 * reps, with the OpenMP threads available:
 *   end, batched           kv_attn_fold_par, B queries per call
 *   spread, per position   kv_attn_fold_par per distinct prefix (the old
 *                          replay path: one pass over the keys per query)
 *   spread, multi          kv_attn_fold_multi, B queries per call (one pass)
 * and the ratios spread / end (target <= 0.6 with the multi kernel; the
 * spread queries do about half the work of the end ones). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include "core/rng.h"
#include "kernels/attn.h"
#include "kernels/partial.h"

static void clear_all(double *st, int nq, int dv)
{
    for (int q = 0; q < nq; q++) kv_partial_clear(st + (size_t)q * KV_PSTATE_LEN(dv), dv);
}

int main(int argc, char **argv)
{
    int lg = argc > 1 ? atoi(argv[1]) : 16, d = argc > 2 ? atoi(argv[2]) : 128;
    int m = argc > 3 ? atoi(argv[3]) : 256, B = argc > 4 ? atoi(argv[4]) : 64, reps = argc > 5 ? atoi(argv[5]) : 5;
    if (lg < 8 || lg > 26 || d < 1 || d > 4096 || m < 1 || B < 1 || reps < 1) {
        fprintf(stderr, "usage: bench_replay [log2_n 8..26] [d] [queries] [batch] [reps]\n");
        return 2;
    }
    size_t n = (size_t)1 << lg, dv = (size_t)d, sl = KV_PSTATE_LEN(dv);
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv);
    float *Q = malloc(sizeof(float) * (size_t)m * d);
    double *st = malloc(sizeof(double) * (size_t)m * sl);
    size_t *spread = malloc(sizeof(size_t) * m), *end = malloc(sizeof(size_t) * m);
    if (!K || !V || !Q || !st || !spread || !end) { fprintf(stderr, "bench_replay: out of memory\n"); return 1; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n * (size_t)d; i++) {
        K[i] = (float)kv_hash_normal(1, 1, i, 0);
        V[i] = (float)kv_hash_normal(1, 2, i, 0);
    }
    for (size_t i = 0; i < (size_t)m * d; i++) Q[i] = (float)kv_hash_normal(1, 3, i, 0);
    for (int j = 0; j < m; j++) {
        spread[j] = (size_t)(((uint64_t)(j + 1) * n + (uint64_t)m - 1) / (uint64_t)m);
        end[j] = n;
    }
    float scale = 1.0f / sqrtf((float)d);
    double t_end = 1e30, t_old = 1e30, t_multi = 1e30, sink = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = omp_get_wtime();
        clear_all(st, m, (int)dv);
        for (int j = 0; j < m; j += B) {
            int c = m - j < B ? m - j : B;
            kv_attn_fold_par(Q + (size_t)j * d, c, K, V, n, d, (int)dv, scale, st + (size_t)j * sl);
        }
        double t = omp_get_wtime() - t0;
        t_end = t < t_end ? t : t_end;
        sink += st[KV_PS_L];

        t0 = omp_get_wtime();
        clear_all(st, m, (int)dv);
        for (int j = 0; j < m;) {
            int g = 1;
            while (j + g < m && spread[j + g] == spread[j]) g++;
            kv_attn_fold_par(Q + (size_t)j * d, g, K, V, spread[j], d, (int)dv, scale, st + (size_t)j * sl);
            j += g;
        }
        t = omp_get_wtime() - t0;
        t_old = t < t_old ? t : t_old;
        sink += st[KV_PS_L];

        t0 = omp_get_wtime();
        clear_all(st, m, (int)dv);
        for (int j = 0; j < m; j += B) {
            int c = m - j < B ? m - j : B;
            kv_attn_fold_multi(Q + (size_t)j * d, c, spread + j, K, V, d, (int)dv, scale, st + (size_t)j * sl);
        }
        t = omp_get_wtime() - t0;
        t_multi = t < t_multi ? t : t_multi;
        sink += st[KV_PS_L];
    }
    printf("bench_replay: n = 2^%d, d = dv = %d, %d queries in batches of %d, %d threads, best of %d\n", lg, d, m, B,
           omp_get_max_threads(), reps);
    printf("%-34s %10.4f s\n", "end, batched (fold_par)", t_end);
    printf("%-34s %10.4f s   spread / end = %.2f\n", "spread, per position (fold_par)", t_old, t_old / t_end);
    printf("%-34s %10.4f s   spread / end = %.2f (target <= 0.6): %s\n", "spread, multi-position (fold_multi)",
           t_multi, t_multi / t_end, t_multi / t_end <= 0.6 ? "met" : "NOT met");
    if (sink == 12345.678) printf(" ");
    free(K); free(V); free(Q); free(st); free(spread); free(end);
    return 0;
}
