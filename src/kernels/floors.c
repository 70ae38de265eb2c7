/* floors.c - the bandwidth and compute floors (see floors.h). */
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include "kernels/floors.h"

/* the widest vector of the build's instruction set; the kernels use 16
 * floats as one (AVX-512) or 2 or 4 of these (narrower ISAs) */
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float vec __attribute__((vector_size(4 * LANES)));
/* independent chains: enough to cover FMA latency x ports (4 x 2), few
 * enough to stay in 16 registers with the two operands */
#define NACC 12

const char *kv_floor_isa(void)
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

static double thread_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

double kv_floor_fma_peak(long iters, int reps, double *sink)
{
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double rate = 0, acc = 0;
#pragma omp parallel reduction(+ : acc, rate)
        {
            float s = 1.0f + 1e-3f * (float)omp_get_thread_num();
            vec a[NACC], zero = { 0 };
            vec b = zero + 0.999999f, c = zero + 1e-6f * s; /* a -> c / (1 - b): no overflow */
            for (int j = 0; j < NACC; j++) a[j] = zero + (s + (float)j);
            double t0 = thread_cpu();
            for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
                for (int j = 0; j < NACC; j++) a[j] = a[j] * b + c;
            }
            double t = thread_cpu() - t0;
            if (t > 0) rate += (double)iters * NACC * LANES * 2 / t;
            for (int j = 0; j < NACC; j++)
                for (int k = 0; k < LANES; k++) acc += a[j][k];
        }
        best = rate > best ? rate : best;
        *sink += acc;
    }
    return best;
}

double kv_floor_probe(const float *a, const float *b, size_t n, double *sink)
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

int kv_floors_measure(kv_floors *f, kv_err *err)
{
    /* 64 MiB in all: twice the last-level cache a core sees on the CPUs we
     * run on (32 MiB read at 3-10x DRAM speed there), and still short to
     * touch: huge pages where the kernel gives them (4 KiB first touches
     * on a VM cost more than the reads).  mmap, not malloc: freeing 32 MiB
     * blocks would raise glibc's mmap threshold for the whole run */
    size_t n = (size_t)8 << 20, bytes = n * sizeof(float);
    void *ma = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *mb = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ma == MAP_FAILED || mb == MAP_FAILED) {
        if (ma != MAP_FAILED) munmap(ma, bytes);
        if (mb != MAP_FAILED) munmap(mb, bytes);
        return kv_seterr(err, KV_EINTERNAL, "floors: out of memory for the bandwidth probe");
    }
    float *a = ma, *b = mb;
#ifdef MADV_HUGEPAGE
    madvise(a, bytes, MADV_HUGEPAGE);
    madvise(b, bytes, MADV_HUGEPAGE);
#endif
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) { a[i] = (float)(i & 7) * 0.125f; b[i] = 1.0f; }
    double sink = 0, best = 1e30;
    for (int r = 0; r < 8; r++) {
        double t = kv_floor_probe(a, b, n, &sink);
        best = t < best ? t : best;
    }
    munmap(a, bytes);
    munmap(b, bytes);
    f->read_bw = 2.0 * (double)n * sizeof(float) / best;
    f->fma_peak = kv_floor_fma_peak(1L << 19, 5, &sink);
    f->threads = omp_get_max_threads();
    if (sink == 1234.5678) f->threads++; /* never: keeps sink alive */
    return KV_OK;
}

int kv_floors_read(const char *path, kv_floors *f, kv_err *err)
{
    FILE *fp = fopen(path, "r");
    if (!fp) return kv_seterr(err, KV_EINPUT, "--floors %s: %s", path, strerror(errno));
    char line[256];
    *f = (kv_floors){ 0, 0, 0 };
    int ln = 0;
    while (fgets(line, sizeof line, fp)) {
        ln++;
        char key[64];
        double v;
        char *h = strchr(line, '#');
        if (h) *h = 0;
        if (sscanf(line, " %63s", key) != 1) continue; /* blank */
        if (sscanf(line, " %63s %lf", key, &v) != 2 || v <= 0 || v > 1e18) {
            fclose(fp);
            return kv_seterr(err, KV_EINPUT, "--floors %s: line %d: expected NAME POSITIVE-NUMBER", path, ln);
        }
        if (!strcmp(key, "read_bytes_per_second")) f->read_bw = v;
        else if (!strcmp(key, "flops_per_second")) f->fma_peak = v;
        else if (!strcmp(key, "threads")) f->threads = (int)v;
        else {
            fclose(fp);
            return kv_seterr(err, KV_EINPUT, "--floors %s: line %d: unknown name '%s'", path, ln, key);
        }
    }
    fclose(fp);
    if (f->read_bw <= 0 || f->fma_peak <= 0)
        return kv_seterr(err, KV_EINPUT, "--floors %s: needs read_bytes_per_second and flops_per_second", path);
    return KV_OK;
}

int kv_floors_write(const char *path, const kv_floors *f, kv_err *err)
{
    FILE *fp = fopen(path, "w");
    if (!fp) return kv_seterr(err, KV_EINPUT, "floors: cannot write %s: %s", path, strerror(errno));
    fprintf(fp, "# kvstream floors of one rank (docs/PERFORMANCE.md, Floors); vectors: %s\n", kv_floor_isa());
    fprintf(fp, "read_bytes_per_second %.6g\nflops_per_second %.6g\nthreads %d\n", f->read_bw, f->fma_peak,
            f->threads);
    if (fclose(fp)) return kv_seterr(err, KV_EINPUT, "floors: cannot write %s", path);
    return KV_OK;
}

double kv_floor_seconds(const kv_floors *f, int ranks, double read_bytes, double flops)
{
    double P = ranks > 0 ? ranks : 1, tb = read_bytes / (f->read_bw * P), tf = flops / (f->fma_peak * P);
    return tb > tf ? tb : tf;
}
