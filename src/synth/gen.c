/* gen.c - synthetic traces: gaussian, clustered, and the seed paper's hard
 * instances jl and sphere (ALGORITHMS.md section 5). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "synth/gen.h"
#include "core/rng.h"
#include "io/trace.h"

/* hash domains: what a number is for */
enum { H_KEY = 1, H_VAL, H_QRY, H_CENTRE, H_ASSIGN, H_TARGET, H_QCLUSTER, H_VCENTRE };

static uint64_t dom(int what, int64_t s) { return ((uint64_t)what << 48) ^ (uint64_t)s; }

typedef struct {
    const char *name;
    /* fill one key row / value row / query row (query j at prefix p) */
    void (*key)(const kv_gen_opts *o, int64_t s, int64_t i, float *k);
    void (*query)(const kv_gen_opts *o, int64_t s, int64_t j, int64_t p, float *q, int64_t *target);
} gen_kind;

static void normal_row(uint64_t seed, uint64_t d0, int64_t row, int64_t len, double mul, float *out)
{
    for (int64_t c = 0; c < len; c++) out[c] = (float)(mul * kv_hash_normal(seed, d0, (uint64_t)row, (uint64_t)c));
}

static void unit_row(uint64_t seed, uint64_t d0, int64_t row, int64_t len, double radius, float *out)
{
    double nrm = 0;
    double tmp[len];
    for (int64_t c = 0; c < len; c++) {
        tmp[c] = kv_hash_normal(seed, d0, (uint64_t)row, (uint64_t)c);
        nrm += tmp[c] * tmp[c];
    }
    nrm = sqrt(nrm);
    for (int64_t c = 0; c < len; c++) out[c] = (float)(radius * tmp[c] / (nrm > 0 ? nrm : 1));
}

/* gaussian: keys and queries N(0, I) */
static void gauss_key(const kv_gen_opts *o, int64_t s, int64_t i, float *k)
{
    normal_row(o->seed, dom(H_KEY, s), i, o->d, 1.0, k);
}
static void gauss_query(const kv_gen_opts *o, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    (void)p;
    *t = -1;
    normal_row(o->seed, dom(H_QRY, s), j, o->d, 1.0, q);
}

/* clustered: centre g ~ N(0, I), key = centre[g(i)] + spread N(0, I);
 * queries near a random centre too, so the softmax favours one cluster */
static void clustered_row(const kv_gen_opts *o, uint64_t noise_dom, uint64_t assign_dom, int64_t s, int64_t row, float *k)
{
    int64_t g = (int64_t)(kv_hash4(o->seed, assign_dom, (uint64_t)row, 0) % (uint64_t)o->clusters);
    for (int64_t c = 0; c < o->d; c++)
        k[c] = (float)(kv_hash_normal(o->seed, dom(H_CENTRE, s), (uint64_t)g, (uint64_t)c) +
                       o->spread * kv_hash_normal(o->seed, noise_dom, (uint64_t)row, (uint64_t)c));
}
static void clustered_key(const kv_gen_opts *o, int64_t s, int64_t i, float *k)
{
    clustered_row(o, dom(H_KEY, s), dom(H_ASSIGN, s), s, i, k);
}
static void clustered_query(const kv_gen_opts *o, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    (void)p;
    *t = -1;
    clustered_row(o, dom(H_QRY, s), dom(H_QCLUSTER, s), s, j, q);
}

/* jl: keys random unit vectors; query = beta * one earlier key (the target),
 * chosen uniformly among tokens < p.  Values are +-1 (set in value_row). */
static void jl_key(const kv_gen_opts *o, int64_t s, int64_t i, float *k)
{
    unit_row(o->seed, dom(H_KEY, s), i, o->d, 1.0, k);
}
static void jl_query(const kv_gen_opts *o, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    int64_t tgt = (int64_t)(kv_hash4(o->seed, dom(H_TARGET, s), (uint64_t)j, 0) % (uint64_t)p);
    unit_row(o->seed, dom(H_KEY, s), tgt, o->d, o->beta, q);
    *t = tgt;
}

/* sphere: keys and queries uniform on the sphere of radius r */
static void sphere_key(const kv_gen_opts *o, int64_t s, int64_t i, float *k)
{
    unit_row(o->seed, dom(H_KEY, s), i, o->d, o->radius, k);
}
static void sphere_query(const kv_gen_opts *o, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    (void)p;
    *t = -1;
    unit_row(o->seed, dom(H_QRY, s), j, o->d, o->radius, q);
}

static const gen_kind kinds[] = {
    { "gaussian", gauss_key, gauss_query },
    { "clustered", clustered_key, clustered_query },
    { "jl", jl_key, jl_query },
    { "sphere", sphere_key, sphere_query },
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

const char *kv_gen_kinds(void) { return "gaussian, clustered, jl, sphere"; }

static void value_row(const kv_gen_opts *o, int64_t s, int64_t i, float *v)
{
    if (!strcmp(o->kind, "sphere")) {
        /* v = A k / r + b with A (dv x d, entries N(0, 1/d)) and b (N(0, I))
         * fixed per stream: values are a smooth function of the key, so the
         * attention output keeps its scale as n grows (with i.i.d. values it
         * would shrink like 1/sqrt(n) and relative error would say nothing) */
        float k[o->d];
        sphere_key(o, s, i, k);
        for (int64_t c = 0; c < o->dv; c++) {
            double x = kv_hash_normal(o->seed, dom(H_VAL, s), (uint64_t)INT64_MAX, (uint64_t)c);
            for (int64_t j = 0; j < o->d; j++)
                x += kv_hash_normal(o->seed, dom(H_VAL, s), (uint64_t)c, (uint64_t)j) / sqrt((double)o->d) * k[j] / o->radius;
            v[c] = (float)x;
        }
        return;
    }
    if (!strcmp(o->kind, "jl")) { /* independent random bits */
        for (int64_t c = 0; c < o->dv; c++)
            v[c] = (kv_hash4(o->seed, dom(H_VAL, s), (uint64_t)i, (uint64_t)c) >> 63) ? 1.0f : -1.0f;
        return;
    }
    if (!strcmp(o->kind, "clustered")) {
        /* a value centre per cluster plus noise: values follow their keys, as
         * in real caches, so outputs do not average away to 0 */
        int64_t g = (int64_t)(kv_hash4(o->seed, dom(H_ASSIGN, s), (uint64_t)i, 0) % (uint64_t)o->clusters);
        for (int64_t c = 0; c < o->dv; c++)
            v[c] = (float)(kv_hash_normal(o->seed, dom(H_VCENTRE, s), (uint64_t)g, (uint64_t)c) +
                           o->value_noise * kv_hash_normal(o->seed, dom(H_VAL, s), (uint64_t)i, (uint64_t)c));
        return;
    }
    normal_row(o->seed, dom(H_VAL, s), i, o->dv, 1.0, v);
}

void kv_gen_defaults(kv_gen_opts *o)
{
    memset(o, 0, sizeof *o);
    o->kind = "gaussian";
    o->S = 1;
    o->n = 4096;
    o->m = 64;
    o->d = 64;
    o->dv = -1;
    o->clusters = 16;
    o->spread = 0.1;
    o->value_noise = 0.5;
    o->beta = -1;   /* jl default: sqrt(d) (2 ln n + 3), set in run */
    o->radius = 1.0;
    o->chunk = 4096;
    o->seed = 1;
}

int64_t kv_gen_query_pos(const kv_gen_opts *o, int64_t j)
{
    if (o->every_position) return j + 1;
    /* spread evenly, the last query sees the whole stream */
    return (int64_t)(((__int128)(j + 1) * o->n + o->m - 1) / o->m);
}

int kv_gen_run(const kv_gen_opts *in, MPI_Comm comm, kv_err *err)
{
    kv_gen_opts o = *in;
    if (o.dv <= 0) o.dv = o.d;
    if (o.every_position) o.m = o.n;
    const gen_kind *kind = NULL;
    for (size_t i = 0; i < NKINDS; i++)
        if (!strcmp(kinds[i].name, o.kind)) kind = &kinds[i];
    if (!kind) return kv_seterr(err, KV_EINPUT, "gen: unknown --kind '%s' (known: %s)", o.kind, kv_gen_kinds());
    if (!o.out) return kv_seterr(err, KV_EINPUT, "gen: missing -o FILE");
    if (o.S < 1 || o.n < 1 || o.m < 1 || o.d < 1 || o.chunk < 1)
        return kv_seterr(err, KV_EINPUT, "gen: --streams, --tokens, --queries, --dim and --chunk must be >= 1");
    if (o.d > 65536 || o.dv > 65536) return kv_seterr(err, KV_EINPUT, "gen: --dim/--dv above 65536 is not supported");
    if (o.clusters < 1) return kv_seterr(err, KV_EINPUT, "gen: --clusters must be >= 1");
    if (!(o.spread >= 0) || !isfinite(o.spread)) return kv_seterr(err, KV_EINPUT, "gen: --spread must be >= 0");
    if (!(o.value_noise >= 0) || !isfinite(o.value_noise)) return kv_seterr(err, KV_EINPUT, "gen: --value-noise must be >= 0");
    if (!(o.radius > 0) || !isfinite(o.radius)) return kv_seterr(err, KV_EINPUT, "gen: --radius must be > 0");
    /* jl: the target's logit is beta/sqrt(d), the others' are ~N(0, beta^2/d^2);
     * beta/sqrt(d) = 2 ln n + 3 leaves the target >= 0.9 of the mass when
     * d >= 4 ln n (the regime the instance is for) */
    if (o.beta < 0) o.beta = sqrt((double)o.d) * (2.0 * log((double)o.n + 1.0) + 3.0);
    if (!isfinite(o.beta)) return kv_seterr(err, KV_EINPUT, "gen: --beta must be finite");
    int rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    int is_jl = !strcmp(o.kind, "jl");
    char source[64];
    snprintf(source, sizeof source, "synthetic:%s", o.kind);
    kv_trace_spec ts = { .S = o.S, .n = o.n, .m = o.m, .d = o.d, .dv = o.dv, .chunk = o.chunk,
                         .scale = 1.0 / sqrt((double)o.d), .source = source, .seed = (int64_t)(o.seed & INT64_MAX),
                         .with_query_target = is_jl, .float16 = o.float16, .n_layers = -1, .n_heads = -1, .n_kv_heads = -1, .head_dim = -1 };
    kv_trace_writer *w = kv_trace_create(o.out, comm, &ts, err);
    if (!w) return err->code;
    int64_t C = o.chunk < o.n ? o.chunk : o.n;
    int64_t Cq = o.chunk < o.m ? o.chunk : o.m;
    float *K = malloc(sizeof(float) * (size_t)(C * o.d)), *V = malloc(sizeof(float) * (size_t)(C * o.dv));
    float *Q = malloc(sizeof(float) * (size_t)(Cq * o.d));
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)Cq), *tgt = malloc(sizeof(int64_t) * (size_t)Cq);
    int rc = KV_OK;
    if (!K || !V || !Q || !pos || !tgt) rc = kv_seterr(err, KV_EINTERNAL, "gen: out of memory");
    /* tokens: chunk c belongs to rank c % P */
    for (int64_t c = rank; !rc && c * C < o.n; c += P) {
        int64_t i0 = c * C, cnt = o.n - i0 < C ? o.n - i0 : C;
        for (int64_t s = 0; s < o.S && !rc; s++) {
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < cnt; i++) {
                kind->key(&o, s, i0 + i, K + i * o.d);
                value_row(&o, s, i0 + i, V + i * o.dv);
            }
            rc = kv_trace_write_kv(w, s, i0, cnt, K, V, err);
        }
    }
    /* queries: block b of Cq queries belongs to rank b % P */
    for (int64_t b = rank; !rc && b * Cq < o.m; b += P) {
        int64_t j0 = b * Cq, cnt = o.m - j0 < Cq ? o.m - j0 : Cq;
        for (int64_t j = 0; j < cnt; j++) pos[j] = kv_gen_query_pos(&o, j0 + j);
        for (int64_t s = 0; s < o.S && !rc; s++) {
#pragma omp parallel for schedule(static)
            for (int64_t j = 0; j < cnt; j++) kind->query(&o, s, j0 + j, pos[j], Q + j * o.d, &tgt[j]);
            rc = kv_trace_write_queries(w, s, j0, cnt, Q, err);
            if (!rc && is_jl) rc = kv_trace_write_query_target(w, s, j0, cnt, tgt, err);
        }
        if (!rc) rc = kv_trace_write_query_pos(w, j0, cnt, pos, err);
    }
    free(K); free(V); free(Q); free(pos); free(tgt);
    int rc2 = kv_trace_writer_close(w, err); /* collective: every rank calls it */
    return rc ? rc : rc2;
}
