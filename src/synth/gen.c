/* gen.c - synthetic traces: gaussian, clustered, jl and sphere, and the
 * lower-bound constructions index (high d) and packing (low d) whose probes
 * sit after the stream, and needle, the time barrier's instance (ALGORITHMS.md
 * section 5). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/search.h"
#include "synth/gen.h"
#include "core/rng.h"
#include "io/h5attr.h"
#include "io/trace.h"
#include "mpi/coll.h"

/* hash domains: what a number is for */
enum { H_KEY = 1, H_VAL, H_QRY, H_CENTRE, H_ASSIGN, H_TARGET, H_QCLUSTER, H_VCENTRE };

static uint64_t dom(int what, int64_t s) { return ((uint64_t)what << 48) ^ (uint64_t)s; }

/* What index and packing compute before writing (the same on every rank:
 * each rank derives it from the hashes, so no communication is needed). */
typedef struct {
    double beta;        /* logit of a probe on its target (q = beta sqrt(d) k) */
    int64_t N;          /* packing: points per stream */
    float *pts;         /* packing: S x N x d unit vectors */
    int64_t *needles;   /* needle: S x m probe targets, sorted per stream */
} gen_extra;

/* every kind gets the precomputed extras x; only index and packing use them */
#define X_ const gen_extra *x
typedef struct {
    const char *name;
    /* fill one key row / query row (query j at prefix p) */
    void (*key)(const kv_gen_opts *o, X_, int64_t s, int64_t i, float *k);
    void (*query)(const kv_gen_opts *o, X_, int64_t s, int64_t j, int64_t p, float *q, int64_t *target);
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
static void gauss_key(const kv_gen_opts *o, X_, int64_t s, int64_t i, float *k)
{
    (void)x;
    normal_row(o->seed, dom(H_KEY, s), i, o->d, 1.0, k);
}
static void gauss_query(const kv_gen_opts *o, X_, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    (void)p;
    (void)x;
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
static void clustered_key(const kv_gen_opts *o, X_, int64_t s, int64_t i, float *k)
{
    (void)x;
    clustered_row(o, dom(H_KEY, s), dom(H_ASSIGN, s), s, i, k);
}
static void clustered_query(const kv_gen_opts *o, X_, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    (void)p;
    (void)x;
    *t = -1;
    clustered_row(o, dom(H_QRY, s), dom(H_QCLUSTER, s), s, j, q);
}

/* jl: keys random unit vectors; query = beta * one earlier key (the target),
 * chosen uniformly among tokens < p.  Values are +-1 (set in value_row). */
static void jl_key(const kv_gen_opts *o, X_, int64_t s, int64_t i, float *k)
{
    (void)x;
    unit_row(o->seed, dom(H_KEY, s), i, o->d, 1.0, k);
}
static void jl_query(const kv_gen_opts *o, X_, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    (void)x;
    int64_t tgt = (int64_t)(kv_hash4(o->seed, dom(H_TARGET, s), (uint64_t)j, 0) % (uint64_t)p);
    unit_row(o->seed, dom(H_KEY, s), tgt, o->d, o->beta, q);
    *t = tgt;
}

/* sphere: keys and queries uniform on the sphere of radius r */
static void sphere_key(const kv_gen_opts *o, X_, int64_t s, int64_t i, float *k)
{
    (void)x;
    unit_row(o->seed, dom(H_KEY, s), i, o->d, o->radius, k);
}
static void sphere_query(const kv_gen_opts *o, X_, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    (void)p;
    (void)x;
    *t = -1;
    unit_row(o->seed, dom(H_QRY, s), j, o->d, o->radius, q);
}

/* index: keys as jl (random unit vectors, near-orthogonal when d >= C ln n),
 * values independent bits; every query is a probe q = beta sqrt(d) k_j of a
 * uniform token j < p, so its logit on the target is beta (scale 1/sqrt(d)) */
static void index_query(const kv_gen_opts *o, X_, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    int64_t tgt = (int64_t)(kv_hash4(o->seed, dom(H_TARGET, s), (uint64_t)j, 0) % (uint64_t)p);
    unit_row(o->seed, dom(H_KEY, s), tgt, o->d, x->beta * sqrt((double)o->d), q);
    *t = tgt;
}

/* packing: token i carries point i mod N of a theta-separated set P (its key
 * and, in value_row, that point's bits); a probe is beta sqrt(d) P[a] for a
 * uniform point a among those seen, target token a (its first copy) */
static void packing_key(const kv_gen_opts *o, X_, int64_t s, int64_t i, float *k)
{
    memcpy(k, x->pts + (s * x->N + i % x->N) * o->d, sizeof(float) * (size_t)o->d);
}
static void packing_query(const kv_gen_opts *o, X_, int64_t s, int64_t j, int64_t p, float *q, int64_t *t)
{
    int64_t seen = p < x->N ? p : x->N;
    int64_t a = (int64_t)(kv_hash4(o->seed, dom(H_TARGET, s), (uint64_t)j, 0) % (uint64_t)seen);
    const float *P = x->pts + (s * x->N + a) * o->d;
    for (int64_t c = 0; c < o->d; c++) q[c] = (float)(x->beta * sqrt((double)o->d) * P[c]);
    *t = a;
}

/* needle: keys in random directions, of norm 1 for the tokens some probe
 * targets (the needles, at uniform positions) and NEEDLE_HAY for the rest
 * (the haystack); probes as index's.  A method that picks what it reads
 * without looking at the keys finds a probe's needle only by reading its
 * position; one that compares keys with the query (a bound, a hash) can. */
#define NEEDLE_HAY 0.25
static int is_needle(const kv_gen_opts *o, const gen_extra *x, int64_t s, int64_t i)
{
    const int64_t *t = x->needles + s * o->m;
    int64_t lo = kv_lower_i64(t, o->m, i);
    return lo < o->m && t[lo] == i;
}
static void needle_key(const kv_gen_opts *o, X_, int64_t s, int64_t i, float *k)
{
    unit_row(o->seed, dom(H_KEY, s), i, o->d, is_needle(o, x, s, i) ? 1.0 : NEEDLE_HAY, k);
}

static const gen_kind kinds[] = {
    { "gaussian", gauss_key, gauss_query },
    { "clustered", clustered_key, clustered_query },
    { "jl", jl_key, jl_query },
    { "sphere", sphere_key, sphere_query },
    { "index", jl_key, index_query },
    { "packing", packing_key, packing_query },
    { "needle", needle_key, index_query },
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

const char *kv_gen_kinds(void) { return "gaussian, clustered, jl, sphere, index, packing, needle"; }

static double bit(const kv_gen_opts *o, int64_t s, int64_t row, int64_t c)
{
    return (kv_hash4(o->seed, dom(H_VAL, s), (uint64_t)row, (uint64_t)c) >> 63) ? 1.0 : -1.0;
}

static void value_row(const kv_gen_opts *o, const gen_extra *x, int64_t s, int64_t i, float *v)
{
    if (!strcmp(o->kind, "sphere")) {
        /* v = A k / r + b with A (dv x d, entries N(0, 1/d)) and b (N(0, I))
         * fixed per stream: values are a smooth function of the key, so the
         * attention output keeps its scale as n grows (with i.i.d. values it
         * would shrink like 1/sqrt(n) and relative error would say nothing) */
        float k[o->d];
        sphere_key(o, x, s, i, k);
        for (int64_t c = 0; c < o->dv; c++) {
            double y = kv_hash_normal(o->seed, dom(H_VAL, s), (uint64_t)INT64_MAX, (uint64_t)c);
            for (int64_t j = 0; j < o->d; j++)
                y += kv_hash_normal(o->seed, dom(H_VAL, s), (uint64_t)c, (uint64_t)j) / sqrt((double)o->d) * k[j] / o->radius;
            v[c] = (float)y;
        }
        return;
    }
    if (!strcmp(o->kind, "jl") || !strcmp(o->kind, "index") || !strcmp(o->kind, "needle")) { /* random bits */
        for (int64_t c = 0; c < o->dv; c++) v[c] = (float)bit(o, s, i, c);
        return;
    }
    if (!strcmp(o->kind, "packing")) { /* the bits of the token's point */
        for (int64_t c = 0; c < o->dv; c++) v[c] = (float)bit(o, s, i % x->N, c);
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
    o->beta = -1;   /* jl default: sqrt(d) (2 ln n + 3), set in run; index, packing: picked */
    o->radius = 1.0;
    o->query_at = KV_QAT_AUTO;
    o->theta = 0.4; /* packing: a few hundred points at d = 4 (ALGORITHMS.md) */
    o->points = 4096;
    o->chunk = 4096;
    o->seed = 1;
}

static int query_at(const kv_gen_opts *o)
{
    if (o->every_position) return KV_QAT_SPREAD;
    if (o->query_at == KV_QAT_AUTO)
        return !strcmp(o->kind, "index") || !strcmp(o->kind, "packing") || !strcmp(o->kind, "needle") ? KV_QAT_END
                                                                                                      : KV_QAT_SPREAD;
    return o->query_at;
}

const char *kv_gen_query_at_name(const kv_gen_opts *o)
{
    int q = query_at(o);
    return q == KV_QAT_END ? "end" : q == KV_QAT_LAST ? "last" : "spread";
}

int64_t kv_gen_query_pos(const kv_gen_opts *o, int64_t j)
{
    if (o->every_position) return j + 1;
    int q = query_at(o);
    if (q == KV_QAT_END) return o->n; /* the state after the whole stream */
    if (q == KV_QAT_LAST) return o->n - o->m + 1 + j >= 1 ? o->n - o->m + 1 + j : 1;
    /* spread evenly, the last query sees the whole stream */
    return (int64_t)(((__int128)(j + 1) * o->n + o->m - 1) / o->m);
}

/* Exact attention's mass on the target for logit b * (k_t . k_i) on token i,
 * given gap_i = 1 - k_t . k_i (gap of the target itself 0). */
static double target_mass(const double *gap, int64_t n, int64_t t, double b)
{
    double rest = 0;
    for (int64_t i = 0; i < n; i++)
        if (i != t) rest += exp(-b * gap[i]);
    return 1.0 / (1.0 + rest);
}

/* index: 1 - k_t . k_i for the n keys K (n x d) and probe j's target t */
static double *probe_gaps(const kv_gen_opts *o, const float *K, int64_t s, int64_t j, int64_t *p, int64_t *t)
{
    int64_t d = o->d;
    *p = kv_gen_query_pos(o, j);
    *t = (int64_t)(kv_hash4(o->seed, dom(H_TARGET, s), (uint64_t)j, 0) % (uint64_t)*p);
    double *gap = malloc(sizeof(double) * (size_t)*p);
    for (int64_t i = 0; gap && i < *p; i++) {
        double dt = 0;
        for (int64_t c = 0; c < d; c++) dt += (double)K[*t * d + c] * K[i * d + c];
        gap[i] = 1.0 - dt;
    }
    return gap;
}

/* index, needle: the least beta that puts >= want - 1e-3 (the 1e-3 for the
 * float32 rounding of the file) of every probe's mass on its target, by bisection per probe
 * (the mass grows with beta when no other key equals the target); the max
 * over probes and streams.  *mass: the least mass over probes at that beta.
 * Every rank computes it alike (same hashes, per-probe sums in order). */
static int index_beta(const kv_gen_opts *o, const gen_kind *kind, const gen_extra *x, double want, double *beta,
                      double *mass, kv_err *err)
{
    const double bmax = 1e6;
    int64_t n = o->n, d = o->d;
    float *K = malloc(sizeof(float) * (size_t)(n * d));
    double *bs = malloc(sizeof(double) * (size_t)o->m);
    if (!K || !bs) {
        free(K); free(bs);
        return kv_seterr(err, KV_EINTERNAL, "gen: out of memory (index keeps n x d keys to pick beta)");
    }
    double best = 0, worst = 1;
    int bad = 0, oom = 0;
    for (int pass = 0; pass < 2 && !bad && !oom; pass++) /* 0: pick beta, 1: the mass it leaves */
        for (int64_t s = 0; s < o->S && !bad && !oom; s++) {
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < n; i++) kind->key(o, x, s, i, K + i * d);
#pragma omp parallel for schedule(dynamic) reduction(|| : bad, oom)
            for (int64_t j = 0; j < o->m; j++) {
                int64_t p, t;
                double *gap = probe_gaps(o, K, s, j, &p, &t);
                if (!gap) { oom = 1; continue; }
                if (pass == 1) {
                    bs[j] = target_mass(gap, p, t, best);
                } else {
                    double lo = 0, hi = 1;
                    while (hi < bmax && target_mass(gap, p, t, hi) < want) hi *= 2;
                    if (target_mass(gap, p, t, hi) < want) bad = 1;
                    for (int it = 0; it < 60 && !bad; it++) {
                        double mid = 0.5 * (lo + hi);
                        if (target_mass(gap, p, t, mid) >= want) hi = mid;
                        else lo = mid;
                    }
                    bs[j] = hi;
                }
                free(gap);
            }
            for (int64_t j = 0; j < o->m && !bad && !oom; j++) {
                if (pass == 0) best = bs[j] > best ? bs[j] : best;
                else worst = bs[j] < worst ? bs[j] : worst;
            }
        }
    free(K);
    free(bs);
    if (oom) return kv_seterr(err, KV_EINTERNAL, "gen: out of memory (index: a probe's n logits)");
    if (bad)
        return kv_seterr(err, KV_EINPUT, "gen: %s: keys at d = %lld are too close for beta <= %g to put %g of a "
                         "probe's mass on its target (%s is for d >= 4 ln n; use packing for small d)",
                         o->kind, (long long)d, bmax, want - 1e-3, o->kind);
    *beta = best;
    *mass = worst;
    return KV_OK;
}

/* packing: greedy theta-separated set on the unit sphere from the stream of
 * hashed random directions (a candidate joins if its angle to every point
 * taken is >= theta), until o->points are taken or 4096 candidates in a row
 * are refused (the set is then close to maximal: N ~ (c/theta)^d).  The same
 * number of points per stream (the least over streams), so N is one number. */
static int packing_points(const kv_gen_opts *o, gen_extra *x, double *theta_min, kv_err *err)
{
    int64_t d = o->d, cap = o->points, S = o->S;
    float *pts = malloc(sizeof(float) * (size_t)(S * cap * d));
    int64_t *cnt = malloc(sizeof(int64_t) * (size_t)S);
    double *tmin = malloc(sizeof(double) * (size_t)S);
    if (!pts || !cnt || !tmin) {
        free(pts); free(cnt); free(tmin);
        return kv_seterr(err, KV_EINTERNAL, "gen: out of memory (packing: %lld points)", (long long)cap);
    }
    double ct = cos(o->theta);
#pragma omp parallel for schedule(dynamic)
    for (int64_t s = 0; s < S; s++) {
        float *P = pts + s * cap * d;
        int64_t N = 0, miss = 0;
        double maxdot = -1;
        float c[d];
        for (uint64_t cand = 0; N < cap && miss < 4096; cand++) {
            unit_row(o->seed, dom(H_CENTRE, s), (int64_t)cand, d, 1.0, c);
            double md = -1;
            for (int64_t a = 0; a < N && md <= ct; a++) {
                double dt = 0;
                for (int64_t k = 0; k < d; k++) dt += (double)c[k] * P[a * d + k];
                md = dt > md ? dt : md;
            }
            if (md > ct) { miss++; continue; }
            miss = 0;
            maxdot = md > maxdot ? md : maxdot;
            memcpy(P + N * d, c, sizeof(float) * (size_t)d);
            N++;
        }
        cnt[s] = N;
        tmin[s] = acos(maxdot > 1 ? 1 : maxdot);
    }
    int64_t N = cap;
    double th = M_PI;
    for (int64_t s = 0; s < S; s++) {
        N = cnt[s] < N ? cnt[s] : N;
        th = tmin[s] < th ? tmin[s] : th;
    }
    /* keep the first N of each stream's set, contiguous */
    for (int64_t s = 1; s < S; s++) memmove(pts + s * N * d, pts + s * cap * d, sizeof(float) * (size_t)(N * d));
    free(cnt);
    free(tmin);
    if (N < 2) {
        free(pts);
        return kv_seterr(err, KV_EINPUT, "gen: packing: --theta %g leaves fewer than 2 points", o->theta);
    }
    x->N = N;
    x->pts = pts;
    *theta_min = th;
    return KV_OK;
}

/* packing: exact attention's least mass on the probe's point over all probes
 * (the copies of a point share its key and value, so the target is the point) */
static double packing_mass(const kv_gen_opts *o, const gen_extra *x)
{
    double worst = 1;
    int64_t N = x->N, d = o->d;
    for (int64_t s = 0; s < o->S; s++)
        for (int64_t j = 0; j < o->m; j++) {
            int64_t p = kv_gen_query_pos(o, j), seen = p < N ? p : N;
            int64_t a = (int64_t)(kv_hash4(o->seed, dom(H_TARGET, s), (uint64_t)j, 0) % (uint64_t)seen);
            const float *P = x->pts + s * N * d;
            double num = 0, den = 0;
            for (int64_t b = 0; b < seen; b++) {
                double dt = 0;
                for (int64_t k = 0; k < d; k++) dt += (double)P[a * d + k] * P[b * d + k];
                /* copies of point b among tokens < p */
                double copies = (double)(p / N + (b < p % N ? 1 : 0));
                double w = copies * exp(x->beta * (dt - 1.0));
                den += w;
                if (b == a) num = w;
            }
            worst = num / den < worst ? num / den : worst;
        }
    return worst;
}

/* write what the generator picked as root attributes of the closed trace
 * (rank 0, serial HDF5) */
static int write_picked(const char *path, const kv_gen_opts *o, const kv_gen_picked *pk, kv_err *err)
{
    kv_h5_note notes[] = {
        { .name = "beta", .f = pk->beta },
        { .name = "target_mass_min", .f = pk->target_mass_min },
        { .name = "probes", .s = kv_gen_query_at_name(o) },
        { .name = "points", .i = pk->points, .is_int = 1 },
        { .name = "theta", .f = pk->theta },
    };
    return kv_h5_annotate(path, notes, strcmp(o->kind, "packing") ? 3 : 5, err);
}

int kv_gen_run(const kv_gen_opts *in, MPI_Comm comm, kv_err *err)
{
    return kv_gen_run_picked(in, comm, NULL, err);
}

int kv_gen_run_picked(const kv_gen_opts *in, MPI_Comm comm, kv_gen_picked *picked, kv_err *err)
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
    if (!(o.theta > 0 && o.theta < M_PI)) return kv_seterr(err, KV_EINPUT, "gen: --theta must be in (0, pi)");
    if (o.points < 2 || o.points > (INT64_C(1) << 24)) return kv_seterr(err, KV_EINPUT, "gen: --points must be in [2, 2^24]");
    if (o.every_position && (o.query_at == KV_QAT_END || o.query_at == KV_QAT_LAST ||
                             (o.query_at == KV_QAT_AUTO && (!strcmp(o.kind, "index") || !strcmp(o.kind, "packing")))))
        return kv_seterr(err, KV_EINPUT, "gen: --every-position places its own queries: it excludes --query-at end|last "
                         "(and the default end of index and packing: give --query-at spread)");
    int is_index = !strcmp(o.kind, "index"), is_packing = !strcmp(o.kind, "packing"), is_needle = !strcmp(o.kind, "needle");
    if ((is_index || is_packing || is_needle) && in->beta >= 0)
        return kv_seterr(err, KV_EINPUT, "gen: --beta is picked by --kind %s (see `gen --help`), do not give it", o.kind);
    /* jl: the target's logit is beta/sqrt(d), the others' are ~N(0, beta^2/d^2);
     * beta/sqrt(d) = 2 ln n + 3 leaves the target >= 0.9 of the mass when
     * d >= 4 ln n (the regime the instance is for) */
    if (o.beta < 0) o.beta = sqrt((double)o.d) * (2.0 * log((double)o.n + 1.0) + 3.0);
    if (!isfinite(o.beta)) return kv_seterr(err, KV_EINPUT, "gen: --beta must be finite");
    gen_extra x = { 0 };
    kv_gen_picked pk = { .beta = -1, .target_mass_min = -1, .points = -1, .theta = -1 };
    if (is_needle) { /* the probes' targets, sorted per stream, before any key is made */
        x.needles = malloc(sizeof(int64_t) * (size_t)(o.S * o.m));
        if (!x.needles) return kv_seterr(err, KV_EINTERNAL, "gen: out of memory (needle: %lld targets)", (long long)(o.S * o.m));
        for (int64_t s = 0; s < o.S; s++) {
            int64_t *t = x.needles + s * o.m;
            for (int64_t j = 0; j < o.m; j++)
                t[j] = (int64_t)(kv_hash4(o.seed, dom(H_TARGET, s), (uint64_t)j, 0) % (uint64_t)kv_gen_query_pos(&o, j));
            qsort(t, (size_t)o.m, sizeof *t, kv_cmp_i64);
        }
    }
    /* index: 0.9 of a probe's mass on its target, as the Index argument;
     * needle: 0.95, so that reading the needle alone meets eps = 0.1 */
    if ((is_index || is_needle) &&
        index_beta(&o, kind, &x, is_index ? 0.901 : 0.951, &x.beta, &pk.target_mass_min, err)) {
        free(x.needles);
        return err->code;
    }
    if (is_packing) {
        if (packing_points(&o, &x, &pk.theta, err)) return err->code;
        /* N-1 other points, each with at most twice the target's copies
         * (i mod N: counts differ by <= 1), logits <= beta cos theta:
         * 2 (N-1) e^{-beta (1 - cos theta)} <= 1/9 leaves >= 0.9 on the target */
        x.beta = (log(2.0 * (double)(x.N - 1)) + log(9.0)) / (1.0 - cos(pk.theta));
        pk.points = x.N;
        pk.target_mass_min = packing_mass(&o, &x);
    }
    pk.beta = x.beta;
    if (picked) *picked = pk;
    int rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    int with_target = !strcmp(o.kind, "jl") || is_index || is_packing || is_needle;
    char source[64];
    snprintf(source, sizeof source, "synthetic:%s", o.kind);
    kv_trace_spec ts = { .S = o.S, .n = o.n, .m = o.m, .d = o.d, .dv = o.dv, .chunk = o.chunk,
                         .scale = 1.0 / sqrt((double)o.d), .source = source, .seed = (int64_t)(o.seed & INT64_MAX),
                         .with_query_target = with_target, .float16 = o.float16, .n_layers = -1, .n_heads = -1, .n_kv_heads = -1, .head_dim = -1 };
    kv_trace_writer *w = kv_trace_create(o.out, comm, &ts, err);
    if (!w) {
        free(x.pts);
        free(x.needles);
        return err->code;
    }
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
                kind->key(&o, &x, s, i0 + i, K + i * o.d);
                value_row(&o, &x, s, i0 + i, V + i * o.dv);
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
            for (int64_t j = 0; j < cnt; j++) kind->query(&o, &x, s, j0 + j, pos[j], Q + j * o.d, &tgt[j]);
            rc = kv_trace_write_queries(w, s, j0, cnt, Q, err);
            if (!rc && with_target) rc = kv_trace_write_query_target(w, s, j0, cnt, tgt, err);
        }
        if (!rc) rc = kv_trace_write_query_pos(w, j0, cnt, pos, err);
    }
    free(K); free(V); free(Q); free(pos); free(tgt); free(x.pts); free(x.needles);
    int rc2 = kv_trace_writer_close(w, err); /* collective: every rank calls it */
    if (!rc && !rc2 && (is_index || is_packing || is_needle)) {
        int bad = rank == 0 && write_picked(o.out, &o, &pk, err);
        bad = kv_mpi_any(bad, comm); /* readers wait for the attributes */
        if (bad && rank != 0) kv_seterr(err, KV_EINTERNAL, "gen: rank 0 could not write the attributes of %s", o.out);
        if (bad) return err->code;
    }
    return rc ? rc : rc2;
}
