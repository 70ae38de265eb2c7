/* bench_subgen.c - SubGen throughput and memory on clustered keys, with the
 * cluster cap at the number of natural clusters.
 *
 *   bench_subgen [max_log2_n (default 20)] [index: 1 | 0 | 2 = both (default 2)]
 *
 * Keys: d = 128 around m = 64 or 1024 Gaussian centres (coordinates N(0,1),
 * spread 0.05, so keys of a cluster lie ~0.8 apart, centres ~16), values
 * N(0,1), dv = 128; spec subgen:delta=D,t=16,s=128,clusters=m,index=I.  Two
 * deltas per m: delta = 2 (above the member distance: the clusters are found
 * directly) and delta = 0.01 (far below it: every key would open a cluster,
 * so the cap binds and delta doubles with reservoir merges until it covers
 * the members: the "tiny delta" case).  One thread (per-core figures).
 * Reports, at n = 2^14 .. 2^max: ingest tokens/s over the last interval and
 * its ratio to the target (>= 1 M tokens/s/core with the cap at 64 clusters,
 * >= 0.3 M at 1024, d = 128), microseconds per query and queries/s (64
 * queries per partial call, best of 3 rounds of >= 0.1 s), bytes held against
 * an exact cache n (d + dv) 4 bytes, clusters held.  The "all" line of a run
 * is the ingest rate over all n tokens (the first interval, 0 .. 2^14,
 * included) with its ratio to the target.  Data generation is not timed. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "methods/method.h"
#include "kernels/partial.h"
#include "core/rng.h"

#define D 128
#define DV 128
#define BLK 4096
#define POOL (1 << 20) /* pre-drawn normals: generation stays cheap */
#define NQ 64

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void run(int m, double delta, int index, int maxlg, const float *pool, FILE *out)
{
    kv_rng r;
    kv_rng_seed(&r, 11, (uint64_t)m, 0);
    float *C = malloc(sizeof(float) * (size_t)m * D), *K = malloc(sizeof(float) * BLK * D);
    float *V = malloc(sizeof(float) * BLK * DV), *Q = malloc(sizeof(float) * NQ * D);
    double *st = malloc(sizeof(double) * NQ * KV_PSTATE_LEN(DV));
    if (!C || !K || !V || !Q || !st) { fprintf(stderr, "out of memory\n"); exit(1); }
    for (int i = 0; i < m * D; i++) C[i] = (float)kv_rng_normal(&r);
    for (int i = 0; i < NQ * D; i++) Q[i] = (float)kv_rng_normal(&r);

    kv_method_ctx ctx = { .d = D, .dv = DV, .scale = 1.0 / sqrt((double)D), .n_total = (int64_t)1 << maxlg,
                          .nranks = 1, .seed = 1, .semantics = KV_SEM_FULL };
    char text[128];
    snprintf(text, sizeof text, "subgen:delta=%g,t=16,s=128,clusters=%d,index=%d", delta, m, index);
    const double goal = m <= 64 ? 1.0 : 0.3; /* target, M tokens/s/core */
    kv_spec *sp;
    int cnt;
    kv_err err;
    kv_err_clear(&err);
    const kv_method_ops *ops = kv_method_find("subgen");
    void *g = NULL;
    if (!ops || kv_spec_parse_list(text, &sp, &cnt, &err) || ops->create(&sp[0], &ctx, &g, &err)) {
        fprintf(stderr, "bench_subgen: %s\n", err.msg);
        exit(1);
    }
    free(sp);

    int64_t n = 0, lastn = 0;
    double tin = 0, lastt = 0;
    for (int lg = 14; lg <= maxlg; lg++) {
        int64_t target = (int64_t)1 << lg;
        while (n < target) {
            int64_t b = target - n < BLK ? target - n : BLK;
            for (int64_t i = 0; i < b; i++) {
                const float *c = C + kv_rng_below(&r, (uint64_t)m) * D;
                const float *z = pool + kv_rng_below(&r, POOL - D - DV);
                for (int j = 0; j < D; j++) K[i * D + j] = c[j] + 0.05f * z[j];
                memcpy(V + i * DV, z + D, sizeof(float) * DV);
            }
            double t0 = now();
            if (ops->ingest(g, K, V, n, (size_t)b, &err)) { fprintf(stderr, "bench_subgen: %s\n", err.msg); exit(1); }
            tin += now() - t0;
            n += b;
        }
        /* per-query time: best of 3 rounds of >= 0.1 s (other work on the
         * machine only ever slows a round down) */
        double best = INFINITY;
        for (int round = 0; round < 3; round++) {
            int reps = 0;
            double t0 = now(), tq;
            do {
                ops->partial(g, Q, NQ, n, st);
                reps++;
                tq = now() - t0;
            } while (tq < 0.1);
            if (tq / (reps * NQ) < best) best = tq / (reps * NQ);
        }
        kv_method_extra x;
        ops->extra(g, &x);
        size_t bytes = ops->bytes(g), exact = (size_t)n * (D + DV) * 4;
        double rate = (n - lastn) / (tin - lastt) / 1e6;
        fprintf(out, "%5d %6g %5d  2^%-2d %10.3f %7.2f %9.1f %9.0f %12zu %13zu %8.5f %8lld\n", m, delta, index, lg,
                rate, rate / goal, 1e6 * best, 1 / best, bytes, exact, (double)bytes / exact, (long long)x.clusters);
        fflush(out);
        lastn = n;
        lastt = tin;
    }
    fprintf(out, "%5d %6g %5d  all  %10.3f %7.2f  (ingest M tokens/s/core over 0..2^%d; target %.1f)\n", m, delta,
            index, n / tin / 1e6, n / tin / 1e6 / goal, maxlg, goal);
    ops->free(g);
    free(C); free(K); free(V); free(Q); free(st);
}

int main(int argc, char **argv)
{
    int maxlg = argc > 1 ? atoi(argv[1]) : 20, which = argc > 2 ? atoi(argv[2]) : 2;
    if (maxlg < 14 || maxlg > 26 || which < 0 || which > 2) {
        fprintf(stderr, "usage: bench_subgen [max_log2_n 14..26] [index 0|1|2=both]\n");
        return 2;
    }
    omp_set_num_threads(1);
    float *pool = malloc(sizeof(float) * POOL);
    if (!pool) return 1;
    kv_rng r;
    kv_rng_seed(&r, 5, 0, 0);
    for (int i = 0; i < POOL; i++) pool[i] = (float)kv_rng_normal(&r);
    printf("SubGen d=%d dv=%d t=16 s=128 clusters=m (the cap), 1 thread, %d queries per call; "
           "x_target: ingest / target (1 M tokens/s at m = 64, 0.3 M at m = 1024)\n", D, DV, NQ);
    printf("%5s %6s %5s  %-4s %10s %7s %9s %9s %12s %13s %8s %8s\n", "m", "delta", "index", "n", "ingestM/s",
           "x_target", "us/query", "queries/s", "bytes", "exact_bytes", "ratio", "clusters");
    int ms[] = { 64, 1024 };
    double deltas[] = { 2, 0.01 };
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 2; j++)
            for (int idx = 1; idx >= 0; idx--)
                if (which == 2 || which == idx) run(ms[k], deltas[j], idx, maxlg, pool, stdout);
    free(pool);
    return 0;
}
