/* bench_exact.c - exact attention against the machine's limits, all measured
 * in the same run.
 *
 *   bench_exact [log2_n=20] [d=128] [reps=5]
 *
 * For n tokens of d-dim keys and values (K+V = n*2d*4 bytes: 1 GiB at the
 * defaults) it times, with 1 and 2 OpenMP threads, best of `reps` each:
 *   probe   a vectorised dot product of K with V: one read of the same bytes
 *           (the bandwidth floor)
 *   peak    a register-resident loop of independent vector FMAs of the width
 *           the build uses (the compute floor; bench_floors.h)
 *   single  one query over all tokens (kv_attn_fold_par): K+V GB/s and its
 *           fraction of the probe
 *   batch   64 queries at the same position in one pass: GFLOP/s and its
 *           fraction of the peak
 *   f16     the same two over K and V held as IEEE half (exact's store=f16;
 *           the values are rounded to half first, so both hold the same
 *           numbers): the time against float32's and whether the outputs
 *           are bitwise the same (they must be)
 * Flops counted per query and token: 2d for the logit and 2dv for the value
 * accumulation; the exp, max and sums are not counted (they are overhead the
 * peak does not include).  Targets, 2 threads: single >= 0.92 of
 * the probe, batch >= 0.55 of the peak; each printed as PASS or MISS (from
 * wall times).  "CPU rate" is the same work over the process's CPU time per
 * thread: on a shared machine, where other jobs take the cores, it is what
 * the kernel does while it runs (fair for the compute-bound batch; the
 * single query also loses bandwidth to the others, which it cannot show). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "bench_floors.h"
#include "core/hugemem.h"
#include "kernels/attn.h"
#include "methods/common/quant.h"
#include "kernels/partial.h"
#include "core/rng.h"

/* CPU seconds of the whole process (all threads) */
static double proc_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
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
    uint16_t *Kh = aligned_alloc(64, kv * sizeof(uint16_t)), *Vh = aligned_alloc(64, kv * sizeof(uint16_t));
    double *st = malloc(nq * KV_PSTATE_LEN(dv) * sizeof(double)), *sth = malloc(nq * KV_PSTATE_LEN(dv) * sizeof(double));
    if (!K || !V || !Q || !st || !Kh || !Vh || !sth) { fprintf(stderr, "bench_exact: out of memory\n"); return 1; }
    /* huge pages where the kernel gives them, as exact's store and the
     * floors' probe have (4 KiB pages: a TLB miss every 4 KiB of the stream) */
    kv_mem_hugepages(K, kv * sizeof(float));
    kv_mem_hugepages(V, kv * sizeof(float));
    kv_mem_hugepages(Kh, kv * sizeof(uint16_t));
    kv_mem_hugepages(Vh, kv * sizeof(uint16_t));
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < kv; i++) {
        Kh[i] = kv_half_from_float((float)kv_hash_normal(1, 1, i, 0));
        Vh[i] = kv_half_from_float((float)kv_hash_normal(1, 2, i, 0));
        K[i] = kv_half_to_float(Kh[i]);
        V[i] = kv_half_to_float(Vh[i]);
    }
    for (size_t i = 0; i < nq * (size_t)d; i++) Q[i] = (float)kv_hash_normal(1, 3, i, 0);
    float scale = 1.0f / sqrtf((float)d);
    double bytes = 2.0 * (double)kv * sizeof(float), sink = 0;
    double flops = (double)nq * (double)n * (2.0 * d + 2.0 * (double)dv); /* exp not counted */
    printf("bench_exact: n = 2^%d, d = dv = %d, K+V = %.2f GiB, best of %d; vectors: %s\n", lg, d,
           bytes / (1 << 30), reps, kv_bench_isa());
    printf("%-8s %-26s %10s %12s %10s %12s %10s\n", "threads", "kernel", "seconds", "rate", "of floor", "CPU rate",
           "of floor");
    double single2 = 0, batch2 = 0, batch2c = 0;
    for (int th = 1; th <= 2; th++) {
        omp_set_num_threads(th);
        double tp = 1e30, t1 = 1e30, tb = 1e30, c1 = 1e30, cb = 1e30, peak = kv_bench_fma_peak(reps, &sink);
        for (int r = 0; r < reps; r++) {
            double t = kv_bench_probe(K, V, kv, &sink);
            tp = t < tp ? t : tp;
        }
        for (int r = 0; r < reps; r++) {
            kv_partial_clear(st, (int)dv);
            double t0 = omp_get_wtime(), p0 = proc_cpu();
            kv_attn_fold_par(Q, 1, K, V, n, d, (int)dv, scale, st);
            double t = omp_get_wtime() - t0, c = (proc_cpu() - p0) / th;
            t1 = t < t1 ? t : t1;
            c1 = c < c1 ? c : c1;
            sink += st[KV_PS_L];
        }
        for (int r = 0; r < reps; r++) {
            for (size_t q = 0; q < nq; q++) kv_partial_clear(st + q * KV_PSTATE_LEN(dv), (int)dv);
            double t0 = omp_get_wtime(), p0 = proc_cpu();
            kv_attn_fold_par(Q, (int)nq, K, V, n, d, (int)dv, scale, st);
            double t = omp_get_wtime() - t0, c = (proc_cpu() - p0) / th;
            tb = t < tb ? t : tb;
            cb = c < cb ? c : cb;
            sink += st[KV_PS_L];
        }
        printf("%-8d %-26s %10s %7.1f GF/s %10s\n", th, "peak (register FMAs)", "-", peak / 1e9, "1.00");
        printf("%-8d %-26s %10.4f %7.2f GB/s %10s\n", th, "probe (dot K.V)", tp, bytes / tp / 1e9, "1.00");
        printf("%-8d %-26s %10.4f %7.2f GB/s %10.3f %7.2f GB/s %10s   (of the probe)\n", th, "exact, 1 query", t1,
               bytes / t1 / 1e9, tp / t1, bytes / c1 / 1e9, "-");
        printf("%-8d %-26s %10.4f %7.1f GF/s %10.3f %7.1f GF/s %10.3f   (of the peak; = %.3f of 64 singles)\n", th,
               "exact, 64 queries, 1 pos", tb, flops / tb / 1e9, flops / tb / peak, flops / cb / 1e9, flops / cb / peak,
               tb / (64 * t1));
        if (th == 2) { single2 = tp / t1; batch2 = flops / tb / peak; batch2c = flops / cb / peak; }
        for (int b = 0; b < 2; b++) { /* f16: 1 query, then 64 */
            int m = b ? (int)nq : 1;
            double th16 = 1e30, ch16 = 1e30;
            for (int r = 0; r < reps; r++) {
                for (int q = 0; q < m; q++) kv_partial_clear(sth + q * KV_PSTATE_LEN(dv), (int)dv);
                double t0 = omp_get_wtime(), p0 = proc_cpu();
                kv_attn_fold_par_f16(Q, m, Kh, Vh, n, d, (int)dv, scale, sth);
                double t = omp_get_wtime() - t0, c = (proc_cpu() - p0) / th;
                th16 = t < th16 ? t : th16;
                ch16 = c < ch16 ? c : ch16;
            }
            for (int q = 0; q < m; q++) kv_partial_clear(st + q * KV_PSTATE_LEN(dv), (int)dv);
            kv_attn_fold_par(Q, m, K, V, n, d, (int)dv, scale, st);
            int same = !memcmp(st, sth, (size_t)m * KV_PSTATE_LEN(dv) * sizeof(double));
            if (b)
                printf("%-8d %-26s %10.4f %7.1f GF/s %10.3f   (of the peak; time of float32's %.3f, by CPU time %.3f; bitwise %s)\n",
                       th, "exact f16, 64 queries", th16, flops / th16 / 1e9, flops / th16 / peak, th16 / tb, ch16 / cb,
                       same ? "the same" : "DIFFERENT");
            else
                printf("%-8d %-26s %10.4f %7.2f GB/s %10.3f   (f16 K+V bytes at the probe's rate; time of float32's %.3f, by CPU "
                       "time %.3f; bitwise %s)\n", th, "exact f16, 1 query", th16, bytes / 2 / th16 / 1e9, tp / 2 / th16, th16 / t1, ch16 / c1,
                       same ? "the same" : "DIFFERENT");
        }
    }
    printf("summary, 2 threads: single query %.3f of the probe (target >= 0.92): %s; "
           "64-query batch %.3f of the FMA peak (target >= 0.55): %s (by CPU time %.3f)\n",
           single2, single2 >= 0.92 ? "PASS" : "MISS", batch2, batch2 >= 0.55 ? "PASS" : "MISS", batch2c);
    if (sink == 12345.678) printf(" ");
    free(K); free(V); free(Q); free(st); free(Kh); free(Vh); free(sth);
    return 0;
}
