/* bench_quant.c - per-query time and ingest rate of the quantised caches
 * (kivi, qjl) beside exact, through the method interface.
 *
 *   bench_quant [log2_n=16] [d=64] [reps=20] [nq=1]
 *
 * One stream of n tokens (keys around 64 cluster centres, Gaussian values),
 * ingested in blocks of 4096 after the horizon n; then reps calls of
 * partial with nq queries at prefix n.  Times are CPU seconds of this
 * process (so a busy shared machine inflates them less than wall time;
 * run with OMP_NUM_THREADS=1 for per-core figures), best of 3 rounds.
 * Prints us/query, ingest M tokens/s and bytes held per method. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "core/rng.h"
#include "kernels/partial.h"
#include "methods/method.h"

static double cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

int main(int argc, char **argv)
{
    int lg = argc > 1 ? atoi(argv[1]) : 16, d = argc > 2 ? atoi(argv[2]) : 64;
    int reps = argc > 3 ? atoi(argv[3]) : 20, nq = argc > 4 ? atoi(argv[4]) : 1;
    if (lg < 10 || lg > 24 || d < 1 || d > 1024 || reps < 1 || nq < 1 || nq > 1024) {
        fprintf(stderr, "usage: bench_quant [log2_n 10..24] [d] [reps] [nq]\n");
        return 2;
    }
    static const char *specs[] = { "exact", "kivi:bits=2", "kivi:bits=4", "kivi:bits=8", "qjl", "qjl:vbits=4",
                                   "window:W=6554" };
    int64_t n = (int64_t)1 << lg;
    size_t dv = (size_t)d;
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *C = malloc(sizeof(float) * 64 * d);
    float *Q = malloc(sizeof(float) * nq * d);
    double *st = malloc(sizeof(double) * nq * KV_PSTATE_LEN(dv));
    kv_rng r;
    kv_rng_seed(&r, 1, 2, 3);
    for (int i = 0; i < 64 * d; i++) C[i] = (float)kv_rng_normal(&r);
    for (int64_t t = 0; t < n; t++) {
        int c = (int)kv_rng_below(&r, 64);
        for (int x = 0; x < d; x++) K[t * d + x] = C[c * d + x] + 0.3f * (float)kv_rng_normal(&r);
        for (size_t x = 0; x < dv; x++) V[t * dv + x] = (float)kv_rng_normal(&r);
    }
    for (int i = 0; i < nq * d; i++) Q[i] = (float)kv_rng_normal(&r) / sqrtf((float)d);
    printf("n = %lld, d = dv = %d, %d queries per call, CPU time, best of 3\n", (long long)n, d, nq);
    printf("%-16s %12s %14s %14s\n", "method", "us/query", "ingest Mtok/s", "bytes");
    for (size_t m = 0; m < sizeof specs / sizeof *specs; m++) {
        kv_err err;
        kv_err_clear(&err);
        kv_spec *sp = NULL;
        int cnt = 0;
        if (getenv("BQ_ONLY") && !strstr(specs[m], getenv("BQ_ONLY"))) continue;
        const kv_method_ops *ops;
        char name[32];
        snprintf(name, sizeof name, "%.*s", (int)strcspn(specs[m], ":"), specs[m]);
        ops = kv_method_find(name);
        kv_method_ctx ctx = { .d = d, .dv = d, .scale = 1 / sqrt(d), .n_total = n, .nranks = 1, .shard_tokens = n,
                              .chunk = n, .seed = 1 };
        double best_q = INFINITY, best_i = INFINITY;
        size_t bytes = 0;
        for (int round = 0; round < 3; round++) {
            void *s = NULL;
            if (!ops || kv_spec_parse_list(specs[m], &sp, &cnt, &err) || ops->create(&sp[0], &ctx, &s, &err)) {
                fprintf(stderr, "%s: %s\n", specs[m], err.msg);
                return 1;
            }
            if (ops->horizon) ops->horizon(s, n);
            double t0 = cpu();
            for (int64_t a = 0; a < n; a += 4096)
                if (ops->ingest(s, K + a * d, V + a * dv, a, 4096, &err)) return 1;
            double t1 = cpu();
            for (int i = 0; i < reps; i++)
                if (ops->partial(s, Q, nq, n, st)) return 1;
            double t2 = cpu();
            best_i = fmin(best_i, t1 - t0);
            best_q = fmin(best_q, (t2 - t1) / reps / nq);
            bytes = ops->bytes(s);
            ops->free(s);
            free(sp);
            sp = NULL;
        }
        printf("%-16s %12.1f %14.3f %14zu\n", specs[m], 1e6 * best_q, n / best_i / 1e6, bytes);
    }
    free(K); free(V); free(C); free(Q); free(st);
    return 0;
}
