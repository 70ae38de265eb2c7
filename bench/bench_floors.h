/* bench_floors.h - the two floors the benchmarks print their times
 * against, measured in the same run with the OpenMP threads in use:
 *   kv_bench_fma_peak  the FMA (or, without FMA, mul + add) peak with the
 *                      widest vectors of the build's instruction set, the
 *                      ones the kernels' 16-float vectors compile to: the
 *                      compute floor, from the threads' CPU time (what the
 *                      cores can do)
 *   kv_bench_probe     a vectorised dot product of two arrays: one read of
 *                      their bytes, the bandwidth floor */
#ifndef KVSTREAM_BENCH_FLOORS_H
#define KVSTREAM_BENCH_FLOORS_H

#include <stddef.h>
#include <time.h>
#include <omp.h>

/* the widest vector of the build's instruction set; the kernels use 16
 * floats as one (AVX-512) or 2 or 4 of these (narrower ISAs) */
#if defined(__AVX512F__)
#define KV_BENCH_LANES 16
#elif defined(__AVX__)
#define KV_BENCH_LANES 8
#else
#define KV_BENCH_LANES 4
#endif
typedef float kv_bench_vec __attribute__((vector_size(4 * KV_BENCH_LANES)));
/* independent chains: enough to cover FMA latency x ports (4 x 2), few
 * enough to stay in 16 registers with the two operands */
#define KV_BENCH_NACC 12

static inline const char *kv_bench_isa(void)
{
#if defined(__AVX512F__)
    return "AVX-512 (16 floats), FMA";
#elif defined(__AVX__) && defined(__FMA__)
    return "AVX2 (8 floats), FMA";
#elif defined(__AVX__)
    return "AVX (8 floats), no FMA: mul + add";
#else
    return "SSE2 (4 floats), no FMA: mul + add";
#endif
}

static inline double kv_bench_thread_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* flop/s of all threads of the next parallel region: each thread's flops
 * over its own CPU time (what the cores can do, whatever else the machine
 * runs: on a shared machine wall time would count the time other jobs hold
 * the core), summed; best of max(reps, 20) runs.  A fused or mul+add pair
 * counts 2 flops per lane. */
static inline double kv_bench_fma_peak(int reps, double *sink)
{
    const long iters = 1L << 22;
    double best = 0;
    for (int r = 0; r < (reps > 20 ? reps : 20); r++) {
        double rate = 0, acc = 0;
#pragma omp parallel reduction(+ : acc, rate)
        {
            float s = 1.0f + 1e-3f * (float)omp_get_thread_num();
            kv_bench_vec a[KV_BENCH_NACC], zero = { 0 };
            kv_bench_vec b = zero + 0.999999f, c = zero + 1e-6f * s; /* a -> c / (1 - b): no overflow */
            for (int j = 0; j < KV_BENCH_NACC; j++) a[j] = zero + (s + (float)j);
            double t0 = kv_bench_thread_cpu();
            for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
                for (int j = 0; j < KV_BENCH_NACC; j++) a[j] = a[j] * b + c;
            }
            double t = kv_bench_thread_cpu() - t0;
            rate += (double)iters * KV_BENCH_NACC * KV_BENCH_LANES * 2 / t;
            for (int j = 0; j < KV_BENCH_NACC; j++)
                for (int k = 0; k < KV_BENCH_LANES; k++) acc += a[j][k];
        }
        best = rate > best ? rate : best;
        *sink += acc;
    }
    return best;
}

/* seconds for one read of a[0..n) and b[0..n) (their dot product) */
static inline double kv_bench_probe(const float *a, const float *b, size_t n, double *sink)
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

#endif
