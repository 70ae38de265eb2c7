/* floors.h - the two limits a time is judged against, measured on this
 * machine with the OpenMP threads in use:
 *   kv_floor_fma_peak  the FMA (or, without FMA, mul + add) peak with the
 *                      widest vectors of the build's instruction set (the
 *                      ones the kernels' 16-float vectors compile to): the
 *                      compute floor, from the threads' CPU time
 *   kv_floor_probe     a vectorised dot product of two arrays: one read of
 *                      their bytes, the bandwidth floor
 * bench/ (bench_exact, bench_replay, bench_methods) and the replay's
 * "time/floor" column use these one copy.  kv_floors_measure runs both
 * briefly (< 0.3 s); kv_floors_read/_write keep the figures in a small
 * text file (docs/PERFORMANCE.md, "Floors") so that runs compare. */
#ifndef KVSTREAM_KERNELS_FLOORS_H
#define KVSTREAM_KERNELS_FLOORS_H

#include <stddef.h>
#include "core/kverr.h"

/* "AVX-512 (16 floats), FMA" and so on: what the peak loop compiles to */
const char *kv_floor_isa(void);

/* flop/s of all threads of a parallel region: each thread's flops over
 * its own CPU time (on a shared machine wall time would count the time
 * other jobs hold the core), summed; best of reps runs of iters iterations
 * of 12 independent vector FMAs.  A fused or mul+add pair counts 2 flops
 * per lane.  sink: keeps the work from being optimised away. */
double kv_floor_fma_peak(long iters, int reps, double *sink);

/* wall seconds for one read of a[0..n) and b[0..n) (their dot product, all threads) */
double kv_floor_probe(const float *a, const float *b, size_t n, double *sink);

/* The limits of one rank with its threads. */
typedef struct {
    double read_bw;  /* bytes/s the probe reads */
    double fma_peak; /* flop/s */
    int threads;     /* OpenMP threads they were measured with */
} kv_floors;

/* Both, short: 2 x 32 MiB read 8 times (best) after a first touch, and the
 * peak loop 5 x 2^19 iterations.  KV_EINTERNAL when the arrays cannot be had. */
int kv_floors_measure(kv_floors *f, kv_err *err);

/* The text file: lines "read_bytes_per_second X", "flops_per_second X",
 * "threads N" (any order, '#' comments).  Read rejects a missing or
 * non-positive figure, naming the file. */
int kv_floors_read(const char *path, kv_floors *f, kv_err *err);
int kv_floors_write(const char *path, const kv_floors *f, kv_err *err);

/* Seconds per query at the floor: max(bytes / bw, flops / peak), with the
 * limits of `ranks` ranks working at once (the figures times ranks). */
double kv_floor_seconds(const kv_floors *f, int ranks, double read_bytes, double flops);

#endif
