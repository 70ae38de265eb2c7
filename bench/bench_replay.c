/* bench_replay.c - replay-shaped exact attention against the compute and
 * bandwidth floors measured in the same run.
 *
 *   bench_replay [log2_n=16] [d=128] [queries=256] [batch=64] [reps=5]
 *                [streams=4] [group=4]
 *
 * n tokens of d-dim keys and values, m queries in batches of B as replay
 * makes them.  "spread": query j sees the first ceil((j+1) n / m) tokens
 * (kvstream gen's placement); "end": every query sees all n.  Times, best of
 * reps, with the OpenMP threads available:
 *   end, batched           kv_attn_fold_par, B queries per call
 *   spread, per position   kv_attn_fold_par per distinct prefix (the old
 *                          replay path: one pass over the keys per query)
 *   spread, multi          kv_attn_fold_multi, B queries per call (one pass)
 *   recorded layout        a recorded model's trace: `streams` KV streams
 *                          (layer x kv head), each answering m queries that
 *                          are m / group positions spread over n, times
 *                          `group` query heads sharing the stream (grouped-
 *                          query attention: rows position-major, as in
 *                          docs/TRACE_FORMAT.md), batches of B through
 *                          kv_attn_fold_multi, streams one after another
 * Each line shows its compute floor (flops / the FMA peak; 2d + 2dv flops
 * per query and token seen, exp not counted) and bandwidth floor (the K+V
 * bytes the kernel must read, once per call, over the read bandwidth of a
 * vectorised dot product), both measured in this run (bench_floors.h), and
 * time / max(floors).  spread / end: target <= 0.6 with the multi kernel
 * (the spread queries do about half the work of the end ones). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include "bench_floors.h"
#include "core/rng.h"
#include "kernels/attn.h"
#include "kernels/partial.h"

static void clear_all(double *st, int nq, int dv)
{
    for (int q = 0; q < nq; q++) kv_partial_clear(st + (size_t)q * KV_PSTATE_LEN(dv), dv);
}

static void line(const char *name, double t, double flops, double bytes, double peak, double bw)
{
    double fc = flops / peak, fb = bytes / bw, f = fc > fb ? fc : fb;
    printf("%-38s %9.4f s %9.4f s %9.4f s %8.2f\n", name, t, fc, fb, t / f);
}

int main(int argc, char **argv)
{
    int lg = argc > 1 ? atoi(argv[1]) : 16, d = argc > 2 ? atoi(argv[2]) : 128;
    int m = argc > 3 ? atoi(argv[3]) : 256, B = argc > 4 ? atoi(argv[4]) : 64, reps = argc > 5 ? atoi(argv[5]) : 5;
    int S = argc > 6 ? atoi(argv[6]) : 4, g = argc > 7 ? atoi(argv[7]) : 4;
    if (lg < 8 || lg > 26 || d < 1 || d > 4096 || m < 1 || B < 1 || reps < 1 || S < 1 || S > 1024 || g < 1 ||
        m % g != 0) {
        fprintf(stderr, "usage: bench_replay [log2_n 8..26] [d] [queries] [batch] [reps] [streams 1..1024] "
                        "[group, dividing queries]\n");
        return 2;
    }
    size_t n = (size_t)1 << lg, dv = (size_t)d, sl = KV_PSTATE_LEN(dv), kvs = n * (size_t)d;
    float *K = malloc(sizeof(float) * kvs * S), *V = malloc(sizeof(float) * kvs * S);
    float *Q = malloc(sizeof(float) * (size_t)m * d);
    double *st = malloc(sizeof(double) * (size_t)m * sl);
    size_t *spread = malloc(sizeof(size_t) * m), *rec = malloc(sizeof(size_t) * m);
    if (!K || !V || !Q || !st || !spread || !rec) { fprintf(stderr, "bench_replay: out of memory\n"); return 1; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < kvs * S; i++) {
        K[i] = (float)kv_hash_normal(1, 1, i, 0);
        V[i] = (float)kv_hash_normal(1, 2, i, 0);
    }
    for (size_t i = 0; i < (size_t)m * d; i++) Q[i] = (float)kv_hash_normal(1, 3, i, 0);
    int mp = m / g; /* recorded: positions per stream */
    for (int j = 0; j < m; j++) {
        spread[j] = (size_t)(((uint64_t)(j + 1) * n + (uint64_t)m - 1) / (uint64_t)m);
        rec[j] = (size_t)(((uint64_t)(j / g + 1) * n + (uint64_t)mp - 1) / (uint64_t)mp);
    }
    float scale = 1.0f / sqrtf((float)d);
    double t_end = 1e30, t_old = 1e30, t_multi = 1e30, t_rec = 1e30, sink = 0;
    double peak = kv_bench_fma_peak(reps, &sink), tp = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = kv_bench_probe(K, V, kvs, &sink);
        tp = t < tp ? t : tp;
    }
    double bw = 2.0 * (double)kvs * sizeof(float) / tp, rowb = (double)(d + dv) * sizeof(float);
    double fl_tok = 2.0 * d + 2.0 * (double)dv; /* flops per query and token */
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
            int c = 1;
            while (j + c < m && spread[j + c] == spread[j]) c++;
            kv_attn_fold_par(Q + (size_t)j * d, c, K, V, spread[j], d, (int)dv, scale, st + (size_t)j * sl);
            j += c;
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

        t0 = omp_get_wtime();
        for (int s = 0; s < S; s++) {
            clear_all(st, m, (int)dv);
            for (int j = 0; j < m; j += B) {
                int c = m - j < B ? m - j : B;
                kv_attn_fold_multi(Q + (size_t)j * d, c, rec + j, K + s * kvs, V + s * kvs, d, (int)dv, scale,
                                   st + (size_t)j * sl);
            }
            sink += st[KV_PS_L];
        }
        t = omp_get_wtime() - t0;
        t_rec = t < t_rec ? t : t_rec;
    }
    /* work and the bytes each variant must read */
    double f_end = (double)m * n * fl_tok, b_end = 0, f_sp = 0, b_old = 0, b_multi = 0, f_rec = 0, b_rec = 0;
    for (int j = 0; j < m; j++) f_sp += (double)spread[j] * fl_tok;
    for (int j = 0; j < m; j += B) {
        int c = m - j < B ? m - j : B;
        b_end += (double)n * rowb;
        b_multi += (double)spread[j + c - 1] * rowb;
        b_rec += (double)rec[j + c - 1] * rowb * S;
    }
    for (int j = 0; j < m; j++) {
        if (j == 0 || spread[j] != spread[j - 1]) b_old += (double)spread[j] * rowb;
        f_rec += (double)rec[j] * fl_tok * S;
    }
    printf("bench_replay: n = 2^%d, d = dv = %d, %d queries in batches of %d, %d threads, best of %d\n", lg, d, m, B,
           omp_get_max_threads(), reps);
    printf("floors measured now: FMA peak %.1f GFLOP/s (%s), read bandwidth %.2f GB/s\n", peak / 1e9, kv_bench_isa(),
           bw / 1e9);
    printf("%-38s %11s %11s %11s %8s\n", "", "time", "compute fl", "bandw. fl", "/ floor");
    line("end, batched (fold_par)", t_end, f_end, b_end, peak, bw);
    line("spread, per position (fold_par)", t_old, f_sp, b_old, peak, bw);
    line("spread, multi-position (fold_multi)", t_multi, f_sp, b_multi, peak, bw);
    char name[64];
    snprintf(name, sizeof name, "recorded: %d streams x %d heads/pos", S, g);
    line(name, t_rec, f_rec, b_rec, peak, bw);
    printf("spread / end: per position %.2f; multi %.2f (target <= 0.6): %s\n", t_old / t_end, t_multi / t_end,
           t_multi / t_end <= 0.6 ? "PASS" : "MISS");
    if (sink == 12345.678) printf(" ");
    free(K); free(V); free(Q); free(st); free(spread); free(rec);
    return 0;
}
