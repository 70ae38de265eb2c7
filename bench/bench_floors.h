/* bench_floors.h - the floors the benchmarks print their times against:
 * the one copy lives in src/kernels/floors.h (the replay's "time/floor"
 * column uses it too); these names keep the benchmarks' calls short.
 *   kv_bench_fma_peak  the FMA peak, best of max(reps, 20) runs of 2^22 iterations
 *   kv_bench_probe     one read of two arrays: the bandwidth floor */
#ifndef KVSTREAM_BENCH_FLOORS_H
#define KVSTREAM_BENCH_FLOORS_H

#include "kernels/floors.h"

static inline const char *kv_bench_isa(void) { return kv_floor_isa(); }

static inline double kv_bench_fma_peak(int reps, double *sink)
{
    return kv_floor_fma_peak(1L << 22, reps > 20 ? reps : 20, sink);
}

static inline double kv_bench_probe(const float *a, const float *b, size_t n, double *sink)
{
    return kv_floor_probe(a, b, n, sink);
}

#endif
