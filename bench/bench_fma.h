/* bench_fma.h - the compute floor for the benchmarks: the FMA peak of the
 * OpenMP threads in use, measured with the vector type the kernels use
 * (GCC vector extension of 16 floats: one AVX-512 register under
 * -march=native on such a CPU, 2 or 4 narrower ones elsewhere). */
#ifndef KVSTREAM_BENCH_FMA_H
#define KVSTREAM_BENCH_FMA_H

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
#endif
}

/* flop/s of all threads of the next parallel region, best of reps; a fused
 * or mul+add pair counts 2 flops per lane */
static inline double kv_bench_fma_peak(int reps, double *sink)
{
    const long iters = 1L << 22;
    double best = 0;
    for (int r = 0; r < reps; r++) {
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

#endif
