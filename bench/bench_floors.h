/* bench_floors.h - the two floors the benchmarks print their times
 * against, measured in the same run with the OpenMP threads in use:
 *   kv_bench_fma_peak  the FMA peak, with the vector type the kernels use
 *                      (GCC vector extension of 16 floats: one AVX-512
 *                      register under -march=native on such a CPU, 2 or 4
 *                      narrower ones elsewhere): the compute floor
 *   kv_bench_probe     a vectorised dot product of two arrays: one read of
 *                      their bytes, the bandwidth floor */
#ifndef KVSTREAM_BENCH_FLOORS_H
#define KVSTREAM_BENCH_FLOORS_H

#include <stddef.h>
#include <omp.h>

typedef float kv_bench_v16 __attribute__((vector_size(64)));

/* independent chains: enough to cover FMA latency x ports, few enough to
 * stay in the register file (32 zmm; 16 ymm or xmm hold 8 or 4 v16) */
#if defined(__AVX512F__)
#define KV_BENCH_NACC 12
#elif defined(__AVX__)
#define KV_BENCH_NACC 6
#else
#define KV_BENCH_NACC 3
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

static inline const char *kv_bench_isa(void)
{
#if defined(__AVX512F__)
    return "AVX-512 (16 floats), FMA";
#elif defined(__AVX__) && defined(__FMA__)
    return "AVX2 (8 floats, 2 per v16), FMA";
#elif defined(__AVX__)
    return "AVX (8 floats, 2 per v16), no FMA: mul + add";
#else
    return "SSE2 (4 floats, 4 per v16), no FMA: mul + add";
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
}

/* flop/s of all threads of the next parallel region, best of max(reps, 40)
 * short runs (about 10 ms each: on a shared machine one of them is likely to
 * run undisturbed); a fused or mul+add pair counts 2 flops per lane */
static inline double kv_bench_fma_peak(int reps, double *sink)
{
    const long iters = 1L << 22;
    double best = 0;
    for (int r = 0; r < (reps > 40 ? reps : 40); r++) {
        double t0 = omp_get_wtime(), acc = 0;
        int nth = 1;
#pragma omp parallel reduction(+ : acc)
        {
#pragma omp single
            nth = omp_get_num_threads();
            kv_bench_v16 a[KV_BENCH_NACC], b, c;
            float s = 1.0f + 1e-3f * (float)omp_get_thread_num();
            for (int k = 0; k < 16; k++) { b[k] = 0.999999f; c[k] = 1e-6f * s; }
            for (int j = 0; j < KV_BENCH_NACC; j++)
                for (int k = 0; k < 16; k++) a[j][k] = s + (float)(j + k);
            for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
                for (int j = 0; j < KV_BENCH_NACC; j++) a[j] = a[j] * b + c;
            }
            for (int j = 0; j < KV_BENCH_NACC; j++)
                for (int k = 0; k < 16; k++) acc += a[j][k];
        }
        double t = omp_get_wtime() - t0, f = (double)nth * iters * KV_BENCH_NACC * 16 * 2 / t;
        best = f > best ? f : best;
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
