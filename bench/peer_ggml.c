/* peer_ggml.c - ggml's CPU flash attention (ggml_flash_attn_ext) timed on
 * bench_methods' shapes: the peer that scripts/bench-peers.py --ggml runs.
 *
 *   peer_ggml log2_n d threads reps types
 *       threads: comma-separated counts (1,2); types: comma-separated of
 *       f32, f16, q8_0, q4_0 (the K and V type; the query is f32)
 *
 * Not built by kvstream's CMake: bench-peers.py compiles it against the
 * headers and libraries of a ggml the user built.  n Gaussian tokens
 * (dv = d, scale 1/sqrt(d)), K and V converted to each type by ggml's own
 * converters, one head.  Two regimes, as in bench_methods:
 *   1q    one query over all n tokens (no mask)
 *   64q   64 queries at spread positions (j + 1) n / 64 in one call: an f16
 *         mask holds -inf past each query's position (ggml skips those)
 * One line per type, regime and thread count: us per query, the best and
 * the mean of reps calls after one warm-up call (bench_methods reports
 * means: 16 single queries, one 64-query call), and the relative error (L2) of
 * query 0's output against a double-precision softmax over the same floats
 * before conversion, so the error includes the K/V type's rounding. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "ggml.h"
#include "ggml-cpu.h"

#define NQ 64

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* splitmix64 then Box-Muller: Gaussian floats, the same for a given seed */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void gauss(float *x, size_t m, uint64_t seed)
{
    for (size_t i = 0; i < m; i++) {
        double u = ((double)(mix(seed * 0x100000000ull + 2 * i) >> 11) + 0.5) / 9007199254740992.0;
        double v = (double)(mix(seed * 0x100000000ull + 2 * i + 1) >> 11) / 9007199254740992.0;
        x[i] = (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
    }
}

/* query q over tokens [0, p): double softmax(scale K q) V into out[d] */
static void reference(const float *K, const float *V, const float *q, int64_t p, int d, double *out)
{
    double m = -INFINITY, l = 0, s;
    for (int c = 0; c < d; c++) out[c] = 0;
    for (int64_t t = 0; t < p; t++) {
        s = 0;
        for (int c = 0; c < d; c++) s += (double)K[t * d + c] * q[c];
        s /= sqrt((double)d);
        if (s > m) {
            double r = exp(m - s);
            for (int c = 0; c < d; c++) out[c] *= r;
            l *= r;
            m = s;
        }
        double w = exp(s - m);
        l += w;
        for (int c = 0; c < d; c++) out[c] += w * V[t * d + c];
    }
    for (int c = 0; c < d; c++) out[c] /= l;
}

/* floats into a tensor of type t (rows of d) */
static void convert(struct ggml_tensor *dst, const float *src, int64_t rows, int d)
{
    if (dst->type == GGML_TYPE_F32) memcpy(dst->data, src, sizeof(float) * (size_t)rows * (size_t)d);
    else if (dst->type == GGML_TYPE_F16) ggml_fp32_to_fp16_row(src, dst->data, rows * d);
    else ggml_quantize_chunk(dst->type, src, dst->data, 0, rows, d, NULL);
}

typedef struct {
    int64_t n;
    int d;
    const float *K, *V, *Q;
} shapes;

/* one type, one regime (nq = 1 or NQ), every thread count; 0 on success */
static int run(const shapes *s, enum ggml_type type, int nq, const int *threads, int nth, int reps)
{
    int64_t n = s->n;
    int d = s->d;
    size_t kv = ggml_row_size(type, d) * (size_t)n;
    size_t mem = 2 * kv + (nq > 1 ? sizeof(ggml_fp16_t) * (size_t)n * nq : 0) + 2 * sizeof(float) * (size_t)nq * d +
                 16 * ggml_tensor_overhead() + ggml_graph_overhead() + (1 << 20);
    struct ggml_init_params ip = { mem, NULL, false };
    struct ggml_context *ctx = ggml_init(ip);
    if (!ctx) return fprintf(stderr, "peer_ggml: cannot allocate %zu bytes\n", mem), 1;
    struct ggml_tensor *q = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, d, nq, 1, 1);
    struct ggml_tensor *k = ggml_new_tensor_4d(ctx, type, d, n, 1, 1);
    struct ggml_tensor *v = ggml_new_tensor_4d(ctx, type, d, n, 1, 1);
    struct ggml_tensor *mask = NULL;
    memcpy(q->data, s->Q, sizeof(float) * (size_t)nq * d);
    convert(k, s->K, n, d);
    convert(v, s->V, n, d);
    int64_t p0 = nq > 1 ? n / NQ : n;
    if (nq > 1) {
        mask = ggml_new_tensor_4d(ctx, GGML_TYPE_F16, n, nq, 1, 1);
        ggml_fp16_t zero = ggml_fp32_to_fp16(0.0f), ninf = ggml_fp32_to_fp16(-INFINITY);
        ggml_fp16_t *mp = mask->data;
        for (int j = 0; j < nq; j++)
            for (int64_t t = 0; t < n; t++) mp[(size_t)j * n + t] = t < (j + 1) * n / NQ ? zero : ninf;
    }
    struct ggml_tensor *out = ggml_flash_attn_ext(ctx, q, k, v, mask, (float)(1.0 / sqrt((double)d)), 0.0f, 0.0f);
    struct ggml_cgraph *gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, out);
    double *ref = malloc(sizeof(double) * d);
    if (!ref) return ggml_free(ctx), 1;
    reference(s->K, s->V, s->Q, p0, d, ref);
    for (int i = 0; i < nth; i++) {
        struct ggml_threadpool_params tpp = ggml_threadpool_params_default(threads[i]);
        struct ggml_threadpool *tp = ggml_threadpool_new(&tpp);
        if (!tp) return fprintf(stderr, "peer_ggml: cannot make a pool of %d threads\n", threads[i]), 1;
        struct ggml_cplan cp = ggml_graph_plan(gf, threads[i], tp);
        void *work = cp.work_size ? malloc(cp.work_size) : NULL;
        cp.work_data = work;
        double best = INFINITY, sum = 0;
        for (int r = 0; r <= reps; r++) {
            double t0 = now();
            if (ggml_graph_compute(gf, &cp) != GGML_STATUS_SUCCESS) {
                fprintf(stderr, "peer_ggml: ggml_graph_compute failed\n");
                return 1;
            }
            if (r) best = fmin(best, now() - t0), sum += now() - t0; /* r = 0 warms the caches and the pool */
        }
        /* out is [dv, heads, queries]: query 0's row first */
        double e2 = 0, r2 = 0;
        const float *o = out->data;
        for (int c = 0; c < d; c++) {
            e2 += (o[c] - ref[c]) * (o[c] - ref[c]);
            r2 += ref[c] * ref[c];
        }
        printf("ggml %-5s %3dq %d threads best %12.2f mean %12.2f us/query relerr %.2e\n", ggml_type_name(type), nq,
               threads[i], best * 1e6 / nq, sum / reps * 1e6 / nq, sqrt(e2 / r2));
        fflush(stdout);
        free(work);
        ggml_threadpool_free(tp);
    }
    free(ref);
    ggml_free(ctx);
    return 0;
}

static int type_of(const char *name, enum ggml_type *t)
{
    static const struct { const char *name; enum ggml_type t; } known[] = {
        { "f32", GGML_TYPE_F32 }, { "f16", GGML_TYPE_F16 }, { "q8_0", GGML_TYPE_Q8_0 }, { "q4_0", GGML_TYPE_Q4_0 } };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (!strcmp(name, known[i].name)) return *t = known[i].t, 0;
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: peer_ggml log2_n d threads(1,2) reps types(f32,f16,q8_0,q4_0)\n");
        return 2;
    }
    int lg = atoi(argv[1]), d = atoi(argv[2]), reps = atoi(argv[4]), threads[8], nth = 0;
    if (lg < 8 || lg > 24 || d < 32 || d % 32 || reps < 1) {
        fprintf(stderr, "peer_ggml: need 8 <= log2_n <= 24, d a multiple of 32 (the q8_0/q4_0 block), reps >= 1\n");
        return 2;
    }
    for (char *t = strtok(argv[3], ","); t && nth < 8; t = strtok(NULL, ","))
        if ((threads[nth++] = atoi(t)) < 1) return fprintf(stderr, "peer_ggml: bad thread count %s\n", t), 2;
    ggml_cpu_init();
    shapes s = { (int64_t)1 << lg, d, NULL, NULL, NULL };
    float *K = malloc(sizeof(float) * (size_t)s.n * d), *V = malloc(sizeof(float) * (size_t)s.n * d);
    float *Q = malloc(sizeof(float) * NQ * (size_t)d);
    if (!K || !V || !Q) return fprintf(stderr, "peer_ggml: out of memory\n"), 1;
    gauss(K, (size_t)s.n * d, 1);
    gauss(V, (size_t)s.n * d, 2);
    gauss(Q, NQ * (size_t)d, 3);
    s.K = K, s.V = V, s.Q = Q;
    printf("peer_ggml: n = 2^%d, d = dv = %d, one head, best of %d\n", lg, d, reps);
    for (char *name = strtok(argv[5], ","); name; name = strtok(NULL, ",")) {
        enum ggml_type t;
        if (type_of(name, &t)) return fprintf(stderr, "peer_ggml: unknown type %s (f32, f16, q8_0, q4_0)\n", name), 2;
        if (run(&s, t, 1, threads, nth, reps) || run(&s, t, NQ, threads, nth, reps)) return 1;
    }
    free(K); free(V); free(Q);
    return 0;
}
