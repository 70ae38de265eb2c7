/* test_subgen.c - SubGen (src/methods/subgen/) and its samplers
 * (src/methods/common/sampler.c) against exact attention and against their probabilities. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "methods/method.h"
#include "kernels/partial.h"
#include "core/rng.h"
#include "methods/common/sampler.h"
#include "testutil.h"

static const kv_method_ops *ops;

static kv_method_ctx mkctx(int d, int dv, int64_t n)
{
    kv_method_ctx c = { 0 };
    c.d = d;
    c.dv = dv;
    c.scale = 1.0 / sqrt((double)d);
    c.n_total = n;
    c.seed = 42;
    c.nranks = 1;
    c.semantics = KV_SEM_FULL;
    return c;
}

/* parse + create; returns the return code, *st the instance (or NULL) */
static int create(const char *spec, const kv_method_ctx *ctx, void **st, kv_err *err)
{
    kv_spec *sp = NULL;
    int cnt = 0;
    *st = NULL;
    kv_err_clear(err);
    int rc = kv_spec_parse_list(spec, &sp, &cnt, err);
    if (rc) return rc;
    rc = ops->create(&sp[0], ctx, st, err);
    free(sp);
    return rc;
}

static void *make(const char *spec, const kv_method_ctx *ctx)
{
    kv_err err;
    void *st;
    int rc = create(spec, ctx, &st, &err);
    CHECK(rc == 0, "create '%s': %s", spec, err.msg);
    if (rc) exit(1);
    return st;
}

static void ingest(void *st, const float *K, const float *V, int d, int dv, int64_t first, size_t n)
{
    kv_err err;
    kv_err_clear(&err);
    int rc = ops->ingest(st, K + (size_t)first * d, V + (size_t)first * dv, first, n, &err);
    CHECK(rc == 0, "ingest: %s", err.msg);
}

static void gauss(kv_rng *r, float *x, size_t n, double sd)
{
    for (size_t i = 0; i < n; i++) x[i] = (float)(sd * kv_rng_normal(r));
}

/* values mu + N(0,1) with one random mean mu ~ N(0,1)^dv: z* is then far
 * from 0, as with real value caches, so relative errors mean something */
static void shifted(kv_rng *r, float *V, int64_t n, int dv)
{
    float mu[512];
    gauss(r, mu, (size_t)dv, 1.0);
    for (int64_t i = 0; i < n; i++)
        for (int c = 0; c < dv; c++) V[i * dv + c] = mu[c] + (float)kv_rng_normal(r);
}

/* n keys around m Gaussian centres (coordinates sd cs), spread sp */
static void clustered(kv_rng *r, float *K, int64_t n, int d, int m, double cs, double sp)
{
    float *C = malloc(sizeof(float) * (size_t)m * d);
    gauss(r, C, (size_t)m * d, cs);
    for (int64_t i = 0; i < n; i++) {
        int c = (int)kv_rng_below(r, (uint64_t)m);
        for (int j = 0; j < d; j++) K[i * d + j] = C[c * d + j] + (float)(sp * kv_rng_normal(r));
    }
    free(C);
}

/* exact states of nq queries over the first p tokens */
static void exact_states(const float *Q, int nq, const float *K, const float *V, int64_t p,
                         const kv_method_ctx *c, double *st)
{
    size_t sl = KV_PSTATE_LEN(c->dv);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, c->dv);
    kv_attn_fold(Q, nq, K, V, (size_t)p, c->d, c->dv, (float)c->scale, st);
}

/* relative error |z - z*| / |z*| of state a against reference b */
static double rel(const double *a, const double *b, int dv)
{
    double za[512], zb[512], num = 0, den = 0;
    kv_partial_output(a, dv, za);
    kv_partial_output(b, dv, zb);
    for (int c = 0; c < dv; c++) {
        num += (za[c] - zb[c]) * (za[c] - zb[c]);
        den += zb[c] * zb[c];
    }
    return sqrt(num / (den > 1e-300 ? den : 1e-300));
}

static double mean_rel(const double *a, const double *b, int nq, int dv)
{
    size_t sl = KV_PSTATE_LEN(dv);
    double s = 0;
    for (int q = 0; q < nq; q++) s += rel(a + q * sl, b + q * sl, dv);
    return s / nq;
}

static double max_rel(const double *a, const double *b, int nq, int dv)
{
    size_t sl = KV_PSTATE_LEN(dv);
    double s = 0;
    for (int q = 0; q < nq; q++) s = fmax(s, rel(a + q * sl, b + q * sl, dv));
    return s;
}

/* ---- 1. exactness when the sketch can hold everything -------------------- */
static void test_exact(void)
{
    int d = 16, dv = 8, nq = 10;
    int64_t n = 600;
    kv_method_ctx c = mkctx(d, dv, n);
    kv_rng r;
    kv_rng_seed(&r, 1, 0, 0);
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
    gauss(&r, K, (size_t)n * d, 1.0);
    gauss(&r, V, (size_t)n * dv, 1.0);
    gauss(&r, Q, (size_t)nq * d, 2.0);
    for (int64_t i = 0; i < n; i += 7) memset(V + i * dv, 0, sizeof(float) * dv); /* w = 0 tokens */
    size_t sl = KV_PSTATE_LEN(dv);
    double *st = malloc(sizeof(double) * nq * sl), *ex = malloc(sizeof(double) * nq * sl);

    /* distinct keys, delta = 0, t and s >= n: exact at every prefix */
    void *g = make("subgen:delta=0,t=600,s=600,seed=3,clusters=100000", &c);
    int64_t pts[] = { 1, 50, 333, 600 }, done = 0;
    double worst = 0;
    for (int k = 0; k < 4; k++) {
        while (done < pts[k]) { /* uneven blocks */
            size_t b = (size_t)(1 + kv_rng_below(&r, 40));
            if (done + (int64_t)b > pts[k]) b = (size_t)(pts[k] - done);
            ingest(g, K, V, d, dv, done, b);
            done += (int64_t)b;
        }
        ops->partial(g, Q, nq, pts[k], st);
        exact_states(Q, nq, K, V, pts[k], &c, ex);
        double e = max_rel(st, ex, nq, dv);
        worst = fmax(worst, e);
        kv_method_extra x;
        ops->extra(g, &x);
        CHECK(x.clusters == pts[k], "p=%lld: %lld clusters", (long long)pts[k], (long long)x.clusters);
    }
    CHECK(worst < 1e-5, "delta=0,t=s=n: max relative error %g", worst);
    printf("exact mode: max relative error %.3g\n", worst);
    ops->free(g);

    /* each key three times: delta = 0 merges exact duplicates only, and with
     * t = 1 the weight n_c / 1 = 3 still gives the exact denominator */
    int64_t n3 = 300;
    float *K3 = malloc(sizeof(float) * n3 * d);
    for (int64_t i = 0; i < n3; i++) memcpy(K3 + i * d, K + (i % 100) * d, sizeof(float) * d);
    const char *dup[] = { "subgen:delta=0,t=300,s=300,clusters=100000", "subgen:delta=0,t=1,s=300,clusters=100000" };
    for (int k = 0; k < 2; k++) {
        g = make(dup[k], &c);
        ingest(g, K3, V, d, dv, 0, (size_t)n3);
        kv_method_extra x;
        ops->extra(g, &x);
        CHECK(x.clusters == 100, "%s: %lld clusters, want 100", dup[k], (long long)x.clusters);
        ops->partial(g, Q, nq, n3, st);
        exact_states(Q, nq, K3, V, n3, &c, ex);
        double e = max_rel(st, ex, nq, dv);
        CHECK(e < 1e-5, "%s: duplicates: relative error %g", dup[k], e);
        ops->free(g);
    }

    /* once more than s valued tokens arrived the exact buffer is gone: the
     * answer comes from the samplers (not exact, but sane) */
    g = make("subgen:delta=0,t=600,s=100", &c);
    ingest(g, K, V, d, dv, 0, (size_t)n);
    ops->partial(g, Q, nq, n, st);
    exact_states(Q, nq, K, V, n, &c, ex);
    double e = mean_rel(st, ex, nq, dv);
    CHECK(e > 1e-4 && isfinite(e), "s < n: mean relative error %g (want sampled, finite)", e);
    kv_method_extra x;
    ops->extra(g, &x);
    CHECK(x.kept_tokens > 600 && x.kept_tokens <= 600 + 100, "kept %lld", (long long)x.kept_tokens);
    ops->free(g);

    /* nothing ingested: empty states */
    g = make("subgen:delta=0,t=4,s=4", &c);
    ops->partial(g, Q, nq, 0, st);
    CHECK(st[KV_PS_L] == 0.0 && st[KV_PS_M] == -INFINITY, "empty instance gives a non-empty state");
    ops->free(g);
    free(K3);
    free(K); free(V); free(Q); free(st); free(ex);
}

/* ---- 2. clustered data: memory stops growing ----------------------------- */
static void test_clustered(void)
{
    int d = 32, dv = 16, m = 12, nq = 8;
    int64_t n = 1 << 16;
    kv_method_ctx c = mkctx(d, dv, n);
    kv_rng r;
    kv_rng_seed(&r, 2, 0, 0);
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
    clustered(&r, K, n, d, m, 1.0, 0.02); /* centres ~8 apart, keys ~0.16 from each other */
    gauss(&r, V, (size_t)n * dv, 1.0);
    gauss(&r, Q, (size_t)nq * d, 1.0);
    void *g = make("subgen:delta=1,t=16,s=64", &c);
    void *g0 = make("subgen:delta=1,t=16,s=64,index=0", &c); /* brute-force scan */
    size_t sl = KV_PSTATE_LEN(dv);
    double *st = malloc(sizeof(double) * nq * sl), *st0 = malloc(sizeof(double) * nq * sl);
    size_t b12 = 0;
    int64_t done = 0;
    for (int lg = 12; lg <= 16; lg++) {
        int64_t p = (int64_t)1 << lg;
        ingest(g, K, V, d, dv, done, (size_t)(p - done));
        ingest(g0, K, V, d, dv, done, (size_t)(p - done));
        done = p;
        kv_method_extra x;
        ops->extra(g, &x);
        size_t b = ops->bytes(g);
        if (lg == 12) b12 = b;
        CHECK(x.clusters == m, "n=2^%d: %lld clusters, want %d", lg, (long long)x.clusters, m);
        CHECK(b == b12, "n=2^%d: %zu bytes, %zu at 2^12", lg, b, b12);
        printf("clustered n=2^%d: clusters %lld, bytes %zu (exact %zu)\n", lg, (long long)x.clusters, b,
               (size_t)p * (d + dv) * 4);
        ops->partial(g, Q, nq, p, st);
        ops->partial(g0, Q, nq, p, st0);
        CHECK(!memcmp(st, st0, sizeof(double) * nq * sl), "n=2^%d: index=1 and index=0 differ", lg);
    }
    CHECK(b12 * 20 < (size_t)n * (d + dv) * 4, "2^16 tokens: %zu bytes is not sublinear", b12);
    ops->free(g);
    ops->free(g0);
    free(K); free(V); free(Q); free(st); free(st0);
}

/* sqrt of the top eigenvalue of V^T V (power iteration) */
static double opnorm(const float *V, int64_t n, int dv)
{
    double *G = calloc((size_t)dv * dv, sizeof(double)), x[512], y[512], lam = 0;
    for (int64_t i = 0; i < n; i++)
        for (int a = 0; a < dv; a++)
            for (int b = 0; b < dv; b++) G[a * dv + b] += (double)V[i * dv + a] * V[i * dv + b];
    for (int a = 0; a < dv; a++) x[a] = 1.0 + 0.01 * a;
    for (int it = 0; it < 500; it++) {
        double nn = 0;
        for (int a = 0; a < dv; a++) {
            y[a] = 0;
            for (int b = 0; b < dv; b++) y[a] += G[a * dv + b] * x[b];
            nn += y[a] * y[a];
        }
        nn = sqrt(nn);
        for (int a = 0; a < dv; a++) x[a] = y[a] / nn;
        lam = nn;
    }
    free(G);
    return sqrt(lam);
}

/* fraction of queries with |z - z*| < eps |softmax(a)|_2 |V|_op (and the worst ratio) */
static double bound_ok(const double *st, const double *ex, int nq, int dv, double vop, double eps, double *worst)
{
    size_t sl = KV_PSTATE_LEN(dv);
    int good = 0;
    *worst = 0;
    for (int q = 0; q < nq; q++) {
        double za[512], zb[512], e = 0;
        kv_partial_output(st + q * sl, dv, za);
        kv_partial_output(ex + q * sl, dv, zb);
        for (int j = 0; j < dv; j++) e += (za[j] - zb[j]) * (za[j] - zb[j]);
        double sm2 = sqrt(ex[q * sl + KV_PS_L2]) / ex[q * sl + KV_PS_L]; /* |softmax(a)|_2 */
        double ratio = sqrt(e) / (sm2 * vop);
        *worst = fmax(*worst, ratio);
        good += ratio < eps;
    }
    return good / (double)nq;
}

/* ---- 3. error falls with t and s; the theorem's bound --------------------- */
static void test_accuracy(void)
{
    int d = 16, dv = 16, nq = 64;
    int64_t n = 4096, nbig = 16384;
    kv_method_ctx c = mkctx(d, dv, nbig);
    kv_rng r;
    kv_rng_seed(&r, 3, 0, 0);
    float *K = malloc(sizeof(float) * nbig * d), *V = malloc(sizeof(float) * nbig * dv);
    float *Q = malloc(sizeof(float) * nq * d);
    clustered(&r, K, nbig, d, 8, 1.0, 0.3);
    shifted(&r, V, n, dv);
    gauss(&r, Q, (size_t)nq * d, 1.5);
    size_t sl = KV_PSTATE_LEN(dv);
    double *st = malloc(sizeof(double) * nq * sl), *ex = malloc(sizeof(double) * nq * sl);
    exact_states(Q, nq, K, V, n, &c, ex);

    /* whole estimate: t = s grows */
    int ts[] = { 4, 16, 64, 256 };
    double err[4];
    for (int k = 0; k < 4; k++) {
        err[k] = 0;
        for (int seed = 1; seed <= 3; seed++) {
            char spec[128];
            snprintf(spec, sizeof spec, "subgen:delta=2.5,t=%d,s=%d,seed=%d", ts[k], ts[k], seed);
            void *g = make(spec, &c);
            ingest(g, K, V, d, dv, 0, (size_t)n);
            ops->partial(g, Q, nq, n, st);
            err[k] += mean_rel(st, ex, nq, dv) / 3;
            ops->free(g);
        }
        printf("t=s=%d: mean relative error %.4f\n", ts[k], err[k]);
        if (k) CHECK(err[k] < err[k - 1], "t=s=%d: error %g not below %g", ts[k], err[k], err[k - 1]);
    }
    CHECK(err[3] < err[0] / 4, "error falls too slowly: %g -> %g", err[0], err[3]);

    /* denominator alone (s = n keeps the numerator exact): t grows */
    int tt[] = { 1, 4, 16, 64 };
    double derr[4];
    for (int k = 0; k < 4; k++) {
        char spec[128];
        snprintf(spec, sizeof spec, "subgen:delta=2.5,t=%d,s=%lld", tt[k], (long long)n);
        void *g = make(spec, &c);
        ingest(g, K, V, d, dv, 0, (size_t)n);
        ops->partial(g, Q, nq, n, st);
        derr[k] = 0;
        for (int q = 0; q < nq; q++) { /* |l e^m / (l* e^m*) - 1| */
            const double *a = st + q * sl, *b = ex + q * sl;
            derr[k] += fabs(exp(log(a[KV_PS_L]) + a[KV_PS_M] - log(b[KV_PS_L]) - b[KV_PS_M]) - 1) / nq;
        }
        printf("t=%d, s=n: denominator mean relative error %.4f\n", tt[k], derr[k]);
        if (k) CHECK(derr[k] < derr[k - 1], "t=%d: denominator error %g not below %g", tt[k], derr[k], derr[k - 1]);
        ops->free(g);
    }

    /* theorem-style parameters: |z - z*| <= eps |softmax(a)|_2 |V|_op on
     * >= 95% of queries.  (a) the values above, eps = 0.1, t = 256,
     * s = 1024 < n; (b) zero-mean isotropic values (stable rank = dv, the
     * hardest case for l2 sampling), eps = 0.2, s = 4 dv / eps^2 = 1600 */
    double worst, frac, eps = 0.1, vop = opnorm(V, n, dv);
    void *g = make("subgen:delta=2.5,t=256,s=1024,seed=9", &c);
    ingest(g, K, V, d, dv, 0, (size_t)n);
    ops->partial(g, Q, nq, n, st);
    frac = bound_ok(st, ex, nq, dv, vop, eps, &worst);
    printf("bound (a): %.0f%% of queries below eps=%g (worst ratio %.4f)\n", 100 * frac, eps, worst);
    CHECK(frac >= 0.95, "(a) only %.0f%% of queries within the bound", 100 * frac);
    ops->free(g);

    gauss(&r, V, (size_t)nbig * dv, 1.0);
    exact_states(Q, nq, K, V, nbig, &c, ex);
    eps = 0.2;
    vop = opnorm(V, nbig, dv);
    g = make("subgen:delta=2.5,t=256,s=1600,seed=9", &c);
    ingest(g, K, V, d, dv, 0, (size_t)nbig);
    ops->partial(g, Q, nq, nbig, st);
    frac = bound_ok(st, ex, nq, dv, vop, eps, &worst);
    printf("bound (b): %.0f%% of queries below eps=%g (worst ratio %.4f)\n", 100 * frac, eps, worst);
    CHECK(frac >= 0.95, "(b) only %.0f%% of queries within the bound", 100 * frac);
    ops->free(g);
    free(K); free(V); free(Q); free(st); free(ex);
}

/* ---- 4. determinism -------------------------------------------------------- */
static void run_states(const char *spec, const kv_method_ctx *c, const float *K, const float *V, int64_t n,
                       size_t block, const float *Q, int nq, double *st)
{
    void *g = make(spec, c);
    for (int64_t i = 0; i < n; i += (int64_t)block) {
        size_t b = (size_t)(n - i) < block ? (size_t)(n - i) : block;
        ingest(g, K, V, c->d, c->dv, i, b);
    }
    ops->partial(g, Q, nq, n, st);
    ops->free(g);
}

static void test_seeds(void)
{
    int d = 64, dv = 16, nq = 37; /* three lane blocks, the last partial */
    int64_t n = 6000;
    kv_method_ctx c = mkctx(d, dv, n);
    kv_rng r;
    kv_rng_seed(&r, 4, 0, 0);
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
    clustered(&r, K, n, d, 40, 1.0, 0.1);
    gauss(&r, V, (size_t)n * dv, 1.0);
    gauss(&r, Q, (size_t)nq * d, 1.0);
    size_t sl = KV_PSTATE_LEN(dv), sz = sizeof(double) * nq * sl;
    double *a = malloc(sz), *b = malloc(sz);
    const char *sp = "subgen:delta=1.5,t=8,s=32,seed=7";
    run_states(sp, &c, K, V, n, 512, Q, nq, a);
    run_states(sp, &c, K, V, n, 512, Q, nq, b);
    CHECK(!memcmp(a, b, sz), "same seed: states differ");
    run_states(sp, &c, K, V, n, 1, Q, nq, b);
    CHECK(!memcmp(a, b, sz), "same seed, ingest one token at a time: states differ");
    run_states("subgen:delta=1.5,t=8,s=32,seed=8", &c, K, V, n, 512, Q, nq, b);
    CHECK(memcmp(a, b, sz), "different seeds: identical states");
    kv_method_ctx c1 = c;
    c1.rank = 1;
    run_states(sp, &c1, K, V, n, 512, Q, nq, b);
    CHECK(memcmp(a, b, sz), "different ranks: identical states");
    c1 = c;
    c1.stream = 3;
    run_states(sp, &c1, K, V, n, 512, Q, nq, b);
    CHECK(memcmp(a, b, sz), "different streams: identical states");
    c1 = c;
    c1.seed = 43; /* no seed= in the spec: ctx->seed is used */
    run_states("subgen:delta=1.5,t=8,s=32", &c, K, V, n, 512, Q, nq, a);
    run_states("subgen:delta=1.5,t=8,s=32", &c1, K, V, n, 512, Q, nq, b);
    CHECK(memcmp(a, b, sz), "ctx seed ignored");

    /* queries answered alone equal queries answered in a batch */
    void *g = make(sp, &c);
    ingest(g, K, V, d, dv, 0, (size_t)n);
    ops->partial(g, Q, nq, n, a);
    for (int q = 0; q < nq; q++) ops->partial(g, Q + q * d, 1, n, b + q * sl);
    CHECK(!memcmp(a, b, sz), "batched and single queries differ");
    ops->free(g);

    /* one query at a time (estim.c's dense path) against the 16-lane block,
     * bitwise, where the dot products and the value folds have tails (d, dv
     * not multiples of 4 and 8): the paper's estimator with the exact
     * buffer, with the l2 samples, and joint */
    {
        int d2 = 13, dv2 = 11, nq2 = 18; /* one full lane block, then 2 queries */
        kv_method_ctx c2 = mkctx(d2, dv2, 900);
        float *K2 = malloc(sizeof(float) * 900 * d2), *V2 = malloc(sizeof(float) * 900 * dv2),
              *Q2 = malloc(sizeof(float) * nq2 * d2);
        clustered(&r, K2, 900, d2, 12, 1.0, 0.1);
        gauss(&r, V2, (size_t)900 * dv2, 1.0);
        gauss(&r, Q2, (size_t)nq2 * d2, 1.0);
        size_t sl2 = KV_PSTATE_LEN(dv2), sz2 = sizeof(double) * nq2 * sl2;
        double *a2 = malloc(sz2), *b2 = malloc(sz2);
        const char *sps[] = { "subgen:delta=1.5,t=8,s=2000", "subgen:delta=1.5,t=8,s=32", "subgen:delta=1.5,t=8,estimator=joint" };
        for (int k = 0; k < 3; k++) {
            void *g2 = make(sps[k], &c2);
            ingest(g2, K2, V2, d2, dv2, 0, 900);
            ops->partial(g2, Q2, nq2, 900, a2);
            for (int q = 0; q < nq2; q++) ops->partial(g2, Q2 + q * d2, 1, 900, b2 + q * sl2);
            CHECK(!memcmp(a2, b2, sz2), "%s: single and 16-lane batched queries differ (d = 13, dv = 11)", sps[k]);
            ops->free(g2);
        }
        free(K2); free(V2); free(Q2); free(a2); free(b2);
    }

    /* many clusters (delta = 0, random keys): the parallel centre scan gives
     * the same states on 1 and 2 threads, and the index changes nothing */
    gauss(&r, K, (size_t)n * d, 1.0);
    int nt = omp_get_max_threads();
    omp_set_num_threads(1);
    run_states("subgen:delta=0,t=4,s=32", &c, K, V, n, 1000, Q, nq, a);
    omp_set_num_threads(2);
    run_states("subgen:delta=0,t=4,s=32", &c, K, V, n, 1000, Q, nq, b);
    CHECK(!memcmp(a, b, sz), "1 and 2 threads differ");
    run_states("subgen:delta=0,t=4,s=32,index=0", &c, K, V, n, 1000, Q, nq, b);
    CHECK(!memcmp(a, b, sz), "index=0 differs (random keys)");
    omp_set_num_threads(nt);
    /* a radius near the typical key distance: many near-boundary decisions */
    run_states("subgen:delta=10.5,t=4,s=32", &c, K, V, n, 1000, Q, nq, a);
    run_states("subgen:delta=10.5,t=4,s=32,index=0", &c, K, V, n, 1000, Q, nq, b);
    CHECK(!memcmp(a, b, sz), "index=0 differs (delta near key distances)");
    /* batched scans (several keys per pass) give the same bits as single ones */
    run_states("subgen:delta=10.5,t=4,s=32,index=0", &c, K, V, n, 1, Q, nq, a);
    CHECK(!memcmp(a, b, sz), "index=0: one token per ingest differs from blocks of 1000");
    run_states("subgen:delta=10.5,t=4,s=32,index=0", &c, K, V, n, 3, Q, nq, a);
    CHECK(!memcmp(a, b, sz), "index=0: blocks of 3 differ from blocks of 1000");
    free(K); free(V); free(Q); free(a); free(b);
}

/* ---- 5. the samplers' inclusion probabilities ---------------------------- */
static int within(double freq, double p, double trials)
{
    return fabs(freq - p) <= 5.0 * sqrt(p * (1 - p) / trials) + 1e-12;
}

static void test_samplers(void)
{
    kv_rng r;
    kv_rng_seed(&r, 5, 0, 0);
    /* reservoir: item i of n kept with probability t/n */
    enum { RN = 40, RT = 8, TRIALS = 20000 };
    int cnt[RN] = { 0 }, bad = 0;
    for (int tr = 0; tr < TRIALS; tr++) {
        kv_reservoir res;
        int slot[RT];
        kv_reservoir_init(&res, RT);
        for (int i = 0; i < RN; i++) {
            int64_t k = kv_reservoir_offer(&res, &r);
            if (i < RT) bad += k != i;
            if (k >= 0) slot[k] = i;
            if (i == 4) bad += kv_reservoir_size(&res) != 5;
        }
        bad += kv_reservoir_size(&res) != RT;
        for (int k = 0; k < RT; k++) cnt[slot[k]]++;
    }
    CHECK(bad == 0, "reservoir: %d fill-order/size errors", bad);
    int off = 0;
    for (int i = 0; i < RN; i++) off += !within(cnt[i] / (double)TRIALS, (double)RT / RN, TRIALS);
    CHECK(off == 0, "reservoir: %d items off t/n", off);

    /* l2 sampler: sampler j holds item i with probability w_i / F */
    enum { LN_ = 30, LS = 16, LTR = 5000, MID = 15 };
    double w[LN_], F = 0, Fm = 0;
    for (int i = 0; i < LN_; i++) {
        w[i] = (i % 5) * (i % 5) + 0.5 * (i % 3);
        F += w[i];
        if (i < MID) Fm += w[i];
    }
    static int hold[LN_], holdm[LN_];
    int same = 0, zero = 0, first = 0;
    int take[LS];
    for (int tr = 0; tr < LTR; tr++) {
        kv_l2_sampler ls;
        kv_err err;
        kv_err_clear(&err);
        if (kv_l2_init(&ls, LS, &err)) { CHECK(0, "kv_l2_init: %s", err.msg); return; }
        int got = 0;
        for (int i = 0; i < LN_; i++) {
            int k = kv_l2_offer(&ls, &r, i, w[i], take);
            if (w[i] > 0 && !got) { first += k == LS; got = 1; }
            if (i == MID - 1)
                for (int j = 0; j < LS; j++) holdm[ls.item[j]]++;
        }
        for (int j = 0; j < LS; j++) {
            hold[ls.item[j]]++;
            zero += w[ls.item[j]] == 0.0;
        }
        same += ls.item[0] == ls.item[1];
        CHECK(ls.F == F || fabs(ls.F - F) < 1e-12 * F, "F = %g, want %g", ls.F, F);
        kv_l2_clear(&ls);
    }
    CHECK(first == LTR, "first positive weight taken by all samplers in %d of %d trials", first, LTR);
    CHECK(zero == 0, "zero-weight items sampled %d times", zero);
    double N = (double)LS * LTR, p2 = 0;
    off = 0;
    for (int i = 0; i < LN_; i++) {
        off += !within(hold[i] / N, w[i] / F, N);
        if (i < MID) off += !within(holdm[i] / N, w[i] / Fm, N);
        p2 += (w[i] / F) * (w[i] / F);
    }
    CHECK(off == 0, "l2 sampler: %d inclusion frequencies off w/F", off);
    /* samplers are independent: two agree with probability sum p_i^2 */
    CHECK(within(same / (double)LTR, p2, LTR), "samplers 0 and 1 agree in %d of %d trials (p=%g)", same, LTR, p2);
}

/* ---- 6. bad specs ---------------------------------------------------------- */
static void test_specs(void)
{
    kv_method_ctx c = mkctx(8, 8, 100);
    const char *bad[] = {
        "subgen:delta=-1,t=16,s=128", "subgen:delta=0.5,t=0,s=128", "subgen:delta=0.5,t=16,s=0",
        "subgen:delta=0.5,t=16,s=128,foo=1", "subgen:delta=,t=16,s=128",
        "subgen:delta=abc,t=16,s=128", "subgen:delta=0.5,t=1.5,s=128", "subgen:delta=0.5,t=16,s=128,seed=-3",
        "subgen:delta=0.5,t=16,s=128,index=2", "subgen:estimator=bogus", "subgen:estimator=",
        "subgen:estimator=joint,joint=0", "subgen:estimator=paper,joint=1", "subgen:estimator=joint,s=64",
        "subgen:estimator=1",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        kv_err err;
        void *st;
        int rc = create(bad[i], &c, &st, &err);
        CHECK(rc == KV_EINPUT && st == NULL && err.msg[0], "'%s' accepted (rc %d)", bad[i], rc);
        if (st) ops->free(st);
    }
    const char *good[] = { "subgen:delta=0.5,t=16,s=128", "subgen:delta=0,t=1,s=1,seed=7,name=sg",
                           "subgen:delta=1e3,t=16,s=128,index=0",
                           "subgen:delta=0.5,t=16", "subgen", "subgen:estimator=paper", "subgen:estimator=joint",
                           "subgen:estimator=joint,joint=1", "subgen:estimator=paper,joint=0" }; /* defaults: delta=1, t=16, s=256 */
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        kv_err err;
        void *st;
        int rc = create(good[i], &c, &st, &err);
        CHECK(rc == 0 && st, "'%s' rejected: %s", good[i], err.msg);
        if (st) ops->free(st);
    }
    kv_method_ctx w = c;
    w.semantics = KV_SEM_WINDOW_UNMASKED;
    w.window = 10;
    kv_err err;
    void *st;
    CHECK(create("subgen:delta=0.5,t=16,s=128", &w, &st, &err) == KV_EINPUT, "window semantics accepted");
    if (st) ops->free(st);

    /* estimator=joint is joint=1, estimator=paper is the default: the same
     * states bit for bit */
    int64_t n = 100;
    int nq = 4;
    kv_rng r;
    kv_rng_seed(&r, 5, 0, 0);
    float *K = malloc(sizeof(float) * n * 8), *V = malloc(sizeof(float) * n * 8), *Q = malloc(sizeof(float) * nq * 8);
    gauss(&r, K, (size_t)n * 8, 1.0);
    gauss(&r, V, (size_t)n * 8, 1.0);
    gauss(&r, Q, (size_t)nq * 8, 1.0);
    size_t sz = sizeof(double) * nq * KV_PSTATE_LEN(8);
    double *a = malloc(sz), *b = malloc(sz);
    const char *same[][2] = { { "subgen:estimator=joint,t=4", "subgen:joint=1,t=4" },
                              { "subgen:estimator=paper,t=4,s=16", "subgen:t=4,s=16" } };
    for (int k = 0; k < 2; k++) {
        run_states(same[k][0], &c, K, V, n, 7, Q, nq, a);
        run_states(same[k][1], &c, K, V, n, 7, Q, nq, b);
        CHECK(!memcmp(a, b, sz), "%s and %s differ", same[k][0], same[k][1]);
    }
    run_states("subgen:t=4,s=16", &c, K, V, n, 7, Q, nq, a);
    run_states("subgen:estimator=joint,t=4", &c, K, V, n, 7, Q, nq, b);
    CHECK(memcmp(a, b, sz), "estimator=paper and estimator=joint give the same states (the test tests nothing)");
    free(K); free(V); free(Q); free(a); free(b);
}

/* ---- 7. ranks: chunk-cyclic shards merged --------------------------------- */

/* tokens of rank r of P under chunk-cyclic chunks of C (what the driver says) */
static int64_t shard_of(int64_t n, int P, int r, int64_t C)
{
    int64_t s = 0;
    for (int64_t a = (int64_t)r * C; a < n; a += (int64_t)P * C) s += n - a < C ? n - a : C;
    return s;
}

static void test_ranks(void)
{
    int d = 16, dv = 8, nq = 32, chunk = 64;
    int64_t n = 4096, pmid = 2500;
    kv_method_ctx c = mkctx(d, dv, n);
    kv_rng r;
    kv_rng_seed(&r, 6, 0, 0);
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
    clustered(&r, K, n, d, 8, 1.0, 0.3);
    shifted(&r, V, n, dv);
    gauss(&r, Q, (size_t)nq * d, 1.5);
    size_t sl = KV_PSTATE_LEN(dv), sz = sizeof(double) * nq * sl;
    double *ex = malloc(sz), *exm = malloc(sz), *mg = malloc(sz), *mgm = malloc(sz), *one = malloc(sz);
    exact_states(Q, nq, K, V, n, &c, ex);
    exact_states(Q, nq, K, V, pmid, &c, exm);
    const char *specs[] = { "subgen:delta=0,t=4096,s=4096", "subgen:delta=2.5,t=32,s=128",
                            "subgen:delta=0,t=4096,joint=1", "subgen:delta=2.5,t=32,joint=1" };
    double e1 = 0;
    for (int k = 0; k < 4; k++) {
        for (int P = 1; P <= 4; P++) {
            for (int q = 0; q < nq; q++) {
                kv_partial_clear(mg + q * sl, dv);
                kv_partial_clear(mgm + q * sl, dv);
            }
            for (int rank = 0; rank < P; rank++) {
                kv_method_ctx cr = c;
                cr.rank = rank;
                cr.nranks = P;
                cr.shard_tokens = shard_of(n, P, rank, chunk); /* s and t are split by it */
                void *g = make(specs[k], &cr);
                int mid_done = 0;
                for (int64_t a = (int64_t)rank * chunk; a < n; a += (int64_t)P * chunk) {
                    int64_t b = a + chunk < n ? a + chunk : n;
                    int64_t from = a;
                    if (!mid_done && b > pmid) { /* partial at pmid: tokens < pmid only */
                        if (a < pmid) ingest(g, K, V, d, dv, a, (size_t)(pmid - a));
                        ops->partial(g, Q, nq, pmid, one);
                        for (int q = 0; q < nq; q++) kv_partial_merge(mgm + q * sl, one + q * sl, dv);
                        mid_done = 1;
                        if (a < pmid) from = pmid; /* rest of this chunk */
                    }
                    ingest(g, K, V, d, dv, from, (size_t)(b - from));
                }
                if (!mid_done) {
                    ops->partial(g, Q, nq, pmid, one);
                    for (int q = 0; q < nq; q++) kv_partial_merge(mgm + q * sl, one + q * sl, dv);
                }
                ops->partial(g, Q, nq, n, one);
                for (int q = 0; q < nq; q++) kv_partial_merge(mg + q * sl, one + q * sl, dv);
                ops->free(g);
            }
            double e = mean_rel(mg, ex, nq, dv), em = mean_rel(mgm, exm, nq, dv);
            printf("%s P=%d: mean relative error %.3g (at p=%lld: %.3g)\n", specs[k], P, e, (long long)pmid, em);
            if (k % 2 == 0) {
                CHECK(max_rel(mg, ex, nq, dv) < 1e-5 && max_rel(mgm, exm, nq, dv) < 1e-5,
                      "P=%d: exact settings not exact (%g, %g)", P, e, em);
            } else {
                if (P == 1) e1 = e;
                CHECK(e < 1.5 * e1 + 1e-3 && em < 1.5 * e1 + 0.02, "P=%d: error %g / %g vs %g at P=1", P, e, em, e1);
                CHECK(e < 0.4, "P=%d: error %g", P, e);
            }
        }
    }
    free(K); free(V); free(Q); free(ex); free(exm); free(mg); free(mgm); free(one);
}

/* ---- 8. checkpoints: save, free, create, load, go on ----------------------- */

/* one step of a schedule: ingest tokens first .. first+n-1 (n > 0), or
 * partial() at prefix p for nq queries from Q + q0 * d (n == 0) */
typedef struct {
    int64_t first, p;
    size_t n;
    int nq, q0;
} ckop;

typedef struct {
    const char *spec;
    kv_method_ctx ctx;
    const float *K, *V, *Q;
    ckop *op;
    int nop;
    size_t nst;         /* doubles of all partial states */
    int64_t *fed, *nval; /* tokens, tokens with v != 0, ingested before op i */
} ckrun;

enum { CK_NQ = 40 }; /* query pool: batches of up to 20 cross a lane block */

/* Chunk-cyclic shard of rank `rank` of P (chunks of C tokens): ingest blocks
 * of 1 .. 120 tokens (within a chunk), a partial() after about half of them
 * at any prefix the rank can answer. */
static void ck_make(ckrun *w, const char *spec, const float *K, const float *V, const float *Q, int d, int dv,
                    int64_t n, int P, int rank, int64_t C, uint64_t seed)
{
    kv_rng r;
    kv_rng_seed(&r, seed, 8, 0);
    memset(w, 0, sizeof *w);
    w->spec = spec;
    w->ctx = mkctx(d, dv, n);
    w->ctx.rank = rank;
    w->ctx.nranks = P;
    w->K = K;
    w->V = V;
    w->Q = Q;
    int cap = 16;
    w->op = malloc(sizeof(ckop) * (size_t)cap);
    w->fed = malloc(sizeof(int64_t) * (size_t)cap);
    w->nval = malloc(sizeof(int64_t) * (size_t)cap);
    int64_t fed = 0, nval = 0;
    for (int64_t g = (int64_t)rank * C; g < n;) {
        int64_t cend = (g / C + 1) * C < n ? (g / C + 1) * C : n;
        /* small blocks first: early cuts with the exact buffer alive */
        int64_t len = kv_rng_below(&r, 6) == 0 ? 1 : 1 + (int64_t)kv_rng_below(&r, fed < 40 ? 8 : 120);
        if (len > cend - g) len = cend - g;
        if (w->nop + 2 > cap) {
            cap *= 2;
            w->op = realloc(w->op, sizeof(ckop) * (size_t)cap);
            w->fed = realloc(w->fed, sizeof(int64_t) * (size_t)cap);
            w->nval = realloc(w->nval, sizeof(int64_t) * (size_t)cap);
        }
        w->fed[w->nop] = fed;
        w->nval[w->nop] = nval;
        w->op[w->nop++] = (ckop){ .first = g, .n = (size_t)len };
        for (int64_t i = g; i < g + len; i++) {
            int nz = 0;
            for (int c = 0; c < dv; c++) nz |= V[i * dv + c] != 0.0f;
            nval += nz;
        }
        fed += len;
        int64_t e = g + len;
        g = e < cend ? e : cend + (int64_t)(P - 1) * C; /* the rank's next token */
        if (kv_rng_below(&r, 2) == 0 || g >= n) {
            int64_t hi = g < n ? g : n;
            int nq = 1 + (int)kv_rng_below(&r, 20);
            w->fed[w->nop] = fed;
            w->nval[w->nop] = nval;
            w->op[w->nop++] = (ckop){ .p = e + (int64_t)kv_rng_below(&r, (uint64_t)(hi - e + 1)), .nq = nq,
                                      .q0 = (int)kv_rng_below(&r, (uint64_t)(CK_NQ - nq + 1)) };
            w->nst += (size_t)nq * KV_PSTATE_LEN(dv);
        }
    }
    w->ctx.shard_tokens = fed;
}

static void ck_free(ckrun *w)
{
    free(w->op);
    free(w->fed);
    free(w->nval);
}

typedef struct {
    double *st;           /* every partial state, schedule order */
    size_t *bytes;        /* bytes() after each op */
    kv_method_extra *ex;  /* extra() after each op */
} ckrec;

static void rec_alloc(ckrec *r, const ckrun *w)
{
    r->st = calloc(w->nst + 1, sizeof(double));
    r->bytes = calloc((size_t)w->nop, sizeof(size_t));
    r->ex = calloc((size_t)w->nop, sizeof(kv_method_extra));
}

static void rec_free(ckrec *r)
{
    free(r->st);
    free(r->bytes);
    free(r->ex);
}

/* ops [from, to) on g, recorded into r */
static void ck_ops(const ckrun *w, void *g, int from, int to, ckrec *r)
{
    int d = w->ctx.d, dv = w->ctx.dv;
    size_t off = 0;
    for (int i = 0; i < from; i++) off += w->op[i].n ? 0 : (size_t)w->op[i].nq * KV_PSTATE_LEN(dv);
    for (int i = from; i < to; i++) {
        const ckop *o = &w->op[i];
        if (o->n) {
            ingest(g, w->K, w->V, d, dv, o->first, o->n);
        } else {
            ops->partial(g, w->Q + (size_t)o->q0 * d, o->nq, o->p, r->st + off);
            off += (size_t)o->nq * KV_PSTATE_LEN(dv);
        }
        r->bytes[i] = ops->bytes(g);
        ops->extra(g, &r->ex[i]);
    }
}

static int extra_eq(const kv_method_extra *a, const kv_method_extra *b)
{
    return a->clusters == b->clusters && a->kept_tokens == b->kept_tokens;
}

static void save_state(const void *g, kv_buf *b)
{
    kv_buf_init(b);
    ops->save(g, b);
    CHECK(!b->failed, "save failed");
}

static int load_state(void *g, const uint8_t *data, size_t len, size_t *pos, kv_err *err)
{
    kv_rd rd = { .data = data, .len = len, .pos = 0, .what = "subgen" };
    kv_err_clear(err);
    int rc = ops->load(g, &rd, err);
    if (pos) *pos = rd.pos;
    return rc;
}

/* save g, free it, load into a new instance: the same bytes(), extra(), and
 * saving again gives the same bytes */
static void *ck_resume(const ckrun *w, void *g, int at)
{
    kv_buf b1, b2;
    size_t by = ops->bytes(g), pos = 0;
    kv_method_extra x0, x1;
    ops->extra(g, &x0);
    save_state(g, &b1);
    ops->free(g);
    void *h = make(w->spec, &w->ctx);
    kv_err err;
    int rc = load_state(h, b1.data, b1.len, &pos, &err);
    CHECK(rc == KV_OK, "%s: load at op %d: %s", w->spec, at, err.msg);
    CHECK(pos == b1.len, "%s: load read %zu of %zu bytes", w->spec, pos, b1.len);
    ops->extra(h, &x1);
    CHECK(ops->bytes(h) == by && extra_eq(&x0, &x1), "%s: bytes()/extra() changed by save+load at op %d",
          w->spec, at);
    save_state(h, &b2);
    CHECK(b2.len == b1.len && !memcmp(b1.data, b2.data, b1.len), "%s: saving the loaded state differs (op %d)",
          w->spec, at);
    kv_buf_free(&b1);
    kv_buf_free(&b2);
    return h;
}

/* interrupted at cuts[0 .. nc) (ascending): everything equals ref */
static void ck_check(const ckrun *w, const ckrec *ref, const int *cuts, int nc)
{
    ckrec r;
    rec_alloc(&r, w);
    void *g = make(w->spec, &w->ctx);
    int at = 0;
    for (int c = 0; c < nc; c++) {
        ck_ops(w, g, at, cuts[c], &r);
        g = ck_resume(w, g, cuts[c]);
        at = cuts[c];
    }
    ck_ops(w, g, at, w->nop, &r);
    ops->free(g);
    int bad_st = memcmp(r.st, ref->st, sizeof(double) * w->nst) != 0, bad_b = 0, bad_x = 0;
    for (int i = 0; i < w->nop; i++) {
        bad_b += r.bytes[i] != ref->bytes[i];
        bad_x += !extra_eq(&r.ex[i], &ref->ex[i]);
    }
    CHECK(!bad_st && !bad_b && !bad_x, "%s: resumed at %d point(s) (first %d of %d ops): states %s, %d bytes() "
          "and %d extra() differ", w->spec, nc, nc ? cuts[0] : -1, w->nop, bad_st ? "differ" : "equal", bad_b, bad_x);
    rec_free(&r);
}

/* first op after which at least k tokens are in */
static int op_after(const ckrun *w, int64_t k)
{
    for (int i = 0; i < w->nop; i++)
        if (w->fed[i] >= k) return i;
    return w->nop;
}

/* last op at which between 1 and s valued tokens are in (exact buffer alive) */
static int op_live(const ckrun *w, int64_t s)
{
    int at = -1;
    for (int i = 0; i < w->nop; i++)
        if (w->nval[i] > 0 && w->nval[i] <= s) at = i;
    return at;
}

/* A uninterrupted, then interrupted at one and two points; max_bytes covers
 * every bytes() seen.  buf_cut: an op at which the exact buffer must still
 * be alive (-1: none); a later cut where it is gone is checked too when
 * drop is set. */
static void ck_case(const ckrun *w, int buf_cut, int drop)
{
    ckrec ref;
    rec_alloc(&ref, w);
    void *a = make(w->spec, &w->ctx);
    int64_t mb0 = ops->max_bytes(a);
    ck_ops(w, a, 0, w->nop, &ref);
    CHECK(ops->max_bytes(a) == mb0, "%s: max_bytes changed while ingesting", w->spec);
    ops->free(a);
    size_t peak = 0;
    for (int i = 0; i < w->nop; i++) peak = ref.bytes[i] > peak ? ref.bytes[i] : peak;
    CHECK(mb0 >= (int64_t)peak, "%s: max_bytes %lld < peak bytes() %zu", w->spec, (long long)mb0, peak);

    int n = w->nop, mid = n / 2, s = 0;
    if (strstr(w->spec, ",s=")) sscanf(strstr(w->spec, ",s=") + 3, "%d", &s);
    if (buf_cut >= 0)
        CHECK(w->nval[buf_cut] > 0 && w->nval[buf_cut] <= s, "%s: op %d does not have the exact buffer alive "
              "(%lld valued tokens, s=%d)", w->spec, buf_cut, (long long)w->nval[buf_cut], s);
    if (drop) CHECK(w->nval[mid] > s, "%s: the exact buffer is alive at op %d", w->spec, mid);
    int c0[] = { 0 }, c1[] = { 1 }, cm[] = { mid }, ce[] = { n - 1 }, cn[] = { n }, c2[] = { n / 3, 2 * n / 3 },
        cb[] = { buf_cut, mid }, cb1[] = { buf_cut };
    ck_check(w, &ref, c0, 1);
    ck_check(w, &ref, c1, 1);
    ck_check(w, &ref, cm, 1);
    ck_check(w, &ref, ce, 1);
    ck_check(w, &ref, cn, 1);
    ck_check(w, &ref, c2, 2);
    if (buf_cut >= 0) {
        ck_check(w, &ref, cb1, 1);
        if (buf_cut < mid) ck_check(w, &ref, cb, 2);
    }
    printf("checkpoint %s: %d ops, resumed identically; max_bytes %lld >= peak %zu\n", w->spec, n, (long long)mb0,
           peak);
    rec_free(&ref);
}

/* ---- malformed checkpoints ---- */

/* Offsets of the fields of a saved state (see subgen_save), found by walking
 * it the way subgen_load reads it. */
typedef struct {
    size_t hdr, delta, cap, cdelta, doubl, ccap, rng, hist, last;
    size_t cent, cnorm, cnt, res, nnd; /* offsets of array length fields */
    size_t F, item, w, thr, heap, sk, sv, buf_on, nval, bk, bv, rv; /* F .. sv: 0 with joint=1 */
    int64_t nc, s;
} cklayout;

static size_t arr_skip(const uint8_t *b, size_t at)
{
    int64_t n;
    memcpy(&n, b + at, 8);
    return at + 8 + (size_t)n;
}

static void ck_layout(const uint8_t *b, cklayout *L)
{
    int64_t v;
    L->hdr = 0;
    memcpy(&L->s, b + 4 * 8, 8);
    L->delta = 6 * 8;
    L->cap = L->delta + 8;
    L->cdelta = L->cap + 8;
    L->doubl = L->cdelta + 8;
    L->ccap = L->doubl + 8;
    L->rng = L->ccap + 8;
    L->hist = L->rng + 32;
    L->last = L->hist + 8;
    L->cent = L->last + 8;
    L->cnorm = arr_skip(b, L->cent);
    memcpy(&v, b + L->cnorm, 8);
    L->nc = v / 4;
    L->cnt = arr_skip(b, L->cnorm);
    L->res = arr_skip(b, L->cnt);
    L->nnd = arr_skip(b, L->res);
    if (L->s == 0) { /* joint=1: no l2 section */
        L->F = L->item = L->w = L->thr = L->heap = L->sk = L->sv = 0;
        L->buf_on = arr_skip(b, L->nnd);
    } else {
        L->F = arr_skip(b, L->nnd);
        L->item = L->F + 8;
        L->w = arr_skip(b, L->item);
        L->thr = arr_skip(b, L->w);
        L->heap = arr_skip(b, L->thr);
        L->sk = arr_skip(b, L->heap);
        L->sv = arr_skip(b, L->sk);
        L->buf_on = arr_skip(b, L->sv);
    }
    L->nval = L->buf_on + 8;
    L->bk = L->nval + 8;
    L->bv = arr_skip(b, L->bk);
    L->rv = arr_skip(b, L->bv);
}

/* load a copy of b with bytes [at, at+n) replaced by p; a state that is
 * accepted is used further (ingest, partial) for the sanitizers to watch */
static int load_patched(const ckrun *w, const kv_buf *b, size_t at, const void *p, size_t n, int use_from,
                        kv_err *err)
{
    uint8_t *c = malloc(b->len ? b->len : 1);
    memcpy(c, b->data, b->len);
    if (p) memcpy(c + at, p, n);
    void *g = make(w->spec, &w->ctx);
    int rc = load_state(g, c, p ? b->len : at, NULL, err);
    if (rc == KV_OK && use_from >= 0) {
        static const float zq[20 * 64];
        int d = w->ctx.d, dv = w->ctx.dv, done = 0;
        double st[20 * KV_PSTATE_LEN(64)];
        for (int i = use_from; i < w->nop && done < 4; i++, done++) {
            const ckop *o = &w->op[i];
            if (o->n) ingest(g, w->K, w->V, d, dv, o->first, o->n);
            else ops->partial(g, zq, o->nq, o->p, st); /* zero queries: finite logits */
        }
        ops->bytes(g);
    }
    ops->free(g);
    free(c);
    return rc;
}

static int is_ckerr(int rc, const kv_err *err)
{
    return rc == KV_EINPUT && !strncmp(err->msg, "checkpoint: subgen state", 24);
}

static void ck_malformed(const ckrun *w, int at)
{
    void *g = make(w->spec, &w->ctx);
    ckrec r;
    rec_alloc(&r, w);
    ck_ops(w, g, 0, at, &r);
    rec_free(&r);
    kv_buf b;
    save_state(g, &b);
    ops->free(g);
    kv_err err;
    CHECK(load_patched(w, &b, b.len, NULL, 0, at, &err) == KV_OK, "%s: the whole state is refused: %s", w->spec,
          err.msg);

    /* every prefix */
    int trunc = 0;
    for (size_t cut = 0; cut < b.len; cut++) {
        int rc = load_patched(w, &b, cut, NULL, 0, -1, &err);
        if (!is_ckerr(rc, &err) && !trunc++)
            CHECK(0, "%s: %zu of %zu bytes: rc %d '%s'", w->spec, cut, b.len, rc, err.msg);
    }
    CHECK(trunc == 0, "%s: %d truncated states not refused", w->spec, trunc);

    /* every 8 bytes overwritten with a bad or slightly changed value: refused
     * with the checkpoint error, or accepted and safe to use.  8 bytes that
     * read as a small int64 are (part of) a length, count or index, or of a
     * zero weight or threshold: -1, ~v and INT64_MAX (negative or huge, or
     * NaN / negative as a double) must be refused */
    int other = 0, missed = 0;
    for (size_t i = 0; i + 8 <= b.len; i++) {
        int64_t v;
        memcpy(&v, b.data + i, 8);
        int small = v >= 0 && v <= (int64_t)b.len + w->ctx.n_total;
        const int64_t evil[] = { -1, ~v, INT64_MAX, INT64_MIN, 0, (int64_t)((uint64_t)v + 1),
                                 (int64_t)((uint64_t)v - 1) };
        for (size_t e = 0; e < sizeof evil / sizeof *evil; e++) {
            if (evil[e] == v) continue;
            int rc = load_patched(w, &b, i, &evil[e], 8, at, &err);
            if (rc != KV_OK && !is_ckerr(rc, &err) && !other++)
                CHECK(0, "%s: byte %zu = %llx: rc %d '%s'", w->spec, i, (unsigned long long)evil[e], rc, err.msg);
            if (small && e < 3 && rc == KV_OK && !missed++)
                CHECK(0, "%s: byte %zu: %lld -> %lld accepted", w->spec, i, (long long)v, (long long)evil[e]);
        }
    }
    CHECK(other == 0 && missed == 0, "%s: %d corrupted states gave another error, %d negated/huge integers accepted",
          w->spec, other, missed);

    /* fields the loader must check, each made wrong in turn (when the state
     * has them: "on") */
    cklayout L;
    ck_layout(b.data, &L);
    CHECK(L.rv + 8 <= b.len && arr_skip(b.data, L.rv) == b.len, "%s: test's layout walk ends at %zu of %zu",
          w->spec, arr_skip(b.data, L.rv), b.len);
    const int64_t magic2 = INT64_C(0x326e656762757376); /* "vsubgen2": the format before joint= */
    int rc2 = load_patched(w, &b, 0, &magic2, 8, at, &err);
    CHECK(is_ckerr(rc2, &err) && strstr(err.msg, "older format"), "%s: a vsubgen2 state: rc %d '%s'", w->spec, rc2,
          err.msg);
    if (L.s == 0) { /* joint=1: its own fields, then done */
        int64_t rvlen, nres, one = 1;
        memcpy(&rvlen, b.data + L.rv, 8);
        memcpy(&nres, b.data + L.res, 8);
        nres /= 4 * w->ctx.d;
        CHECK(rvlen == nres * 4 * w->ctx.dv, "%s: %lld bytes of values for %lld reservoir keys", w->spec,
              (long long)rvlen, (long long)nres);
        int64_t shorter = rvlen - 4 * w->ctx.dv;
        float fnan = NAN;
        struct { const char *what; int on; size_t at; const void *p; size_t n; } jf[] = {
            { "value bytes", nres > 0, L.rv, &shorter, 8 }, { "value", nres > 0, L.rv + 8, &fnan, 4 },
            { "buf_on", 1, L.buf_on, &one, 8 }, { "nval", 1, L.nval, &one, 8 }, { "s", 1, 32, &one, 8 },
        };
        int tried = 0;
        for (size_t k = 0; k < sizeof jf / sizeof *jf; k++) {
            if (!jf[k].on) continue;
            int rc = load_patched(w, &b, jf[k].at, jf[k].p, jf[k].n, at, &err);
            CHECK(is_ckerr(rc, &err), "%s: bad %s accepted (rc %d '%s')", w->spec, jf[k].what, rc, err.msg);
            tried++;
        }
        printf("checkpoint %s: %zu-byte state (%lld clusters): all prefixes, every 8 bytes corrupted, "
               "%d bad fields refused\n", w->spec, b.len, (long long)L.nc, tried + 1);
        kv_buf_free(&b);
        return;
    }
    int64_t nval, buf_on, nc = L.nc, lim = w->ctx.shard_tokens, d = w->ctx.d;
    memcpy(&nval, b.data + L.nval, 8);
    memcpy(&buf_on, b.data + L.buf_on, 8);
    double F;
    memcpy(&F, b.data + L.F, 8);
    int live = buf_on && nval > 0;
    int64_t ccap_cap, doubl;
    memcpy(&ccap_cap, b.data + L.cap, 8);
    memcpy(&doubl, b.data + L.doubl, 8);
    struct { const char *what; int on; size_t at; int64_t v; } i64[] = {
        { "magic", 1, 0, 12345 }, { "d", 1, 8, d + 1 }, { "dv", 1, 16, w->ctx.dv - 1 }, { "t", 1, 24, 3 },
        { "s", 1, 32, L.s + 1 }, { "index", 1, 40, 2 }, { "hist", 1, L.hist, 256 }, { "hist", 1, L.hist, -1 },
        { "cap", 1, L.cap, ccap_cap + 1 }, { "cap", nc > 0, L.cap, nc - 1 }, { "doublings", 1, L.doubl, -1 },
        { "doublings", doubl == 0, L.doubl, 1 }, { "doublings", doubl > 0, L.doubl, 0 },
        { "cluster capacity", nc > 0, L.ccap, nc - 1 }, { "cluster capacity", 1, L.ccap, 65 },
        { "cluster capacity", nc > 0, L.ccap, 0 },
        { "last", 1, L.last, nc }, { "last", 1, L.last, -2 }, { "last", nc > 0, L.last, -1 },
        { "centre bytes", 1, L.cent, nc * d * 4 + 4 }, { "centre bytes", 1, L.cent, -8 },
        { "centres", nc > 0, L.cent, (nc - 1) * d * 4 }, { "norms", 1, L.cnorm, (nc + 1) * 4 },
        { "counts", nc > 0, L.cnt, (nc - 1) * 8 }, { "count 0", nc > 0, L.cnt + 8, 0 },
        { "count 0", nc > 0, L.cnt + 8, -3 }, { "count 0", nc > 0, L.cnt + 8, lim + 1 },
        { "count 0 (sum over the shard)", nc > 1, L.cnt + 8, lim },
        { "reservoir bytes", nc > 0, L.res, 0 }, { "index bounds", nc > 0, L.nnd, 0 },
        { "index bounds", 1, L.nnd, (nc + 1) * 8 }, { "F", F > 0, L.F, 0 },
        { "item count", 1, L.item, (L.s - 1) * 8 }, { "item 0", 1, L.item + 8, w->ctx.n_total },
        { "item 0", F > 0, L.item + 8, -1 }, { "heap bytes", 1, L.heap, (L.s + 1) * 4 },
        { "samples", F > 0, L.sk, 0 }, { "samples", F == 0, L.sk, d * 4 }, { "buf_on", 1, L.buf_on, !buf_on },
        { "buf_on", 1, L.buf_on, 2 }, { "nval", live, L.nval, nval + 1 }, { "nval", live, L.nval, L.s + 1 },
        { "nval", 1, L.nval, -1 }, { "nval", F > 0, L.nval, 0 }, { "nval", 1, L.nval, lim + 1 },
        { "buffer", live, L.bk, 0 }, { "buffer", !live, L.bk, d * 4 },
    };
    int tried = 0;
    for (size_t k = 0; k < sizeof i64 / sizeof *i64; k++) {
        int64_t old;
        memcpy(&old, b.data + i64[k].at, 8);
        if (!i64[k].on || old == i64[k].v) continue;
        int rc = load_patched(w, &b, i64[k].at, &i64[k].v, 8, at, &err);
        CHECK(is_ckerr(rc, &err), "%s: %s %lld -> %lld accepted (rc %d '%s')", w->spec, i64[k].what,
              (long long)old, (long long)i64[k].v, rc, err.msg);
        tried++;
    }
    /* doubles, floats, heap slots (int32), the generator */
    double nan = NAN, neg = -1.0, zero = 0.0, half = F / 2, big = F * 2, delta = 7.25, d0, below;
    memcpy(&d0, b.data + L.delta, 8);
    below = d0 > 0 ? d0 / 2 : -1.0;
    int32_t h1 = 0, hs = (int32_t)L.s, hm = -1;
    if (L.s > 1) memcpy(&h1, b.data + L.heap + 12, 4);
    float fnan = NAN;
    uint8_t zeros[32] = { 0 };
    struct { const char *what; int on; size_t at; const void *p; size_t n; } raw[] = {
        { "F", 1, L.F, &nan, 8 }, { "F", 1, L.F, &neg, 8 }, { "delta", 1, L.delta, &delta, 8 },
        { "current delta", 1, L.cdelta, &nan, 8 }, { "current delta", 1, L.cdelta, &below, 8 },
        { "weight 0", F > 0, L.w + 8, &big, 8 }, { "weight 0", 1, L.w + 8, &nan, 8 },
        { "weight 0", F > 0, L.w + 8, &zero, 8 }, { "threshold 0", F > 0, L.thr + 8, &half, 8 },
        { "threshold 0", 1, L.thr + 8, &nan, 8 }, { "heap 0", 1, L.heap + 8, &hs, 4 },
        { "heap 0", 1, L.heap + 8, &hm, 4 }, { "heap 0 = heap 1", L.s > 1, L.heap + 8, &h1, 4 },
        { "centre", nc > 0, L.cent + 8, &fnan, 4 }, { "norm", nc > 0, L.cnorm + 8, &fnan, 4 },
        { "index bound", nc > 0 && strstr(w->spec, "index=0") == NULL, L.nnd + 8, &nan, 8 },
        { "reservoir key", nc > 0, L.res + 8, &fnan, 4 }, { "sample", F > 0, L.sk + 8, &fnan, 4 },
        { "buffered value", live, L.bv + 8, &fnan, 4 }, { "generator", 1, L.rng, zeros, 32 },
    };
    for (size_t k = 0; k < sizeof raw / sizeof *raw; k++) {
        if (!raw[k].on || !memcmp(b.data + raw[k].at, raw[k].p, raw[k].n)) continue;
        int rc = load_patched(w, &b, raw[k].at, raw[k].p, raw[k].n, at, &err);
        CHECK(is_ckerr(rc, &err), "%s: bad %s accepted (rc %d '%s')", w->spec, raw[k].what, rc, err.msg);
        tried++;
    }
    printf("checkpoint %s: %zu-byte state (%lld clusters, buffer %s): all prefixes, every 8 bytes corrupted, "
           "%d bad fields refused\n", w->spec, b.len, (long long)nc, live ? "alive" : "gone", tried);
    kv_buf_free(&b);
}

static void test_checkpoint(void)
{
    int d = 16, dv = 8;
    int64_t n = 3000;
    kv_rng r;
    kv_rng_seed(&r, 8, 0, 0);
    float *Kc = malloc(sizeof(float) * n * d), *Kr = malloc(sizeof(float) * n * d);
    float *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * CK_NQ * d);
    clustered(&r, Kc, n, d, 12, 1.0, 0.2);
    gauss(&r, Kr, (size_t)n * d, 1.0);
    shifted(&r, V, n, dv);
    for (int64_t i = 3; i < n; i += 11) memset(V + i * dv, 0, sizeof(float) * dv); /* w = 0: not sampled */
    gauss(&r, Q, (size_t)CK_NQ * d, 1.0);
    ckrun w;

    /* delta = 0 on distinct keys with t, s >= n: the exact regime, every
     * token its own cluster, the buffer alive throughout */
    ck_make(&w, "subgen:delta=0,t=600,s=600,seed=3,clusters=100000", Kr, V, Q, d, dv, 500, 1, 0, 500, 1);
    ck_case(&w, op_after(&w, 100), 0);
    CHECK(w.fed[w.nop - 1] == 500 && w.nval[w.nop - 1] <= 600, "exact regime: the buffer must live throughout");
    ck_free(&w);
    /* clustered, t = 8, s = 32: with the index and without; saved while the
     * exact buffer lives and after it was dropped */
    const char *cl[] = { "subgen:delta=1.5,t=8,s=32,seed=7", "subgen:delta=1.5,t=8,s=32,seed=7,index=0" };
    for (int k = 0; k < 2; k++) {
        ck_make(&w, cl[k], Kc, V, Q, d, dv, n, 1, 0, n, 2);
        ck_case(&w, op_live(&w, 32), 1);
        ck_free(&w);
    }
    /* the buffer alive at mid-stream (s = 2000), dropped later */
    ck_make(&w, "subgen:delta=1.5,t=8,s=2000", Kc, V, Q, d, dv, n, 1, 0, n, 3);
    ck_case(&w, op_live(&w, 2000), 0);
    CHECK(w.nval[w.nop - 1] > 2000, "s=2000: the buffer must be dropped before the end");
    ck_free(&w);
    /* rank 1 of 3, chunks of 64: sampled ids with gaps, a shard limit */
    ck_make(&w, "subgen:delta=1.5,t=8,s=32", Kc, V, Q, d, dv, n, 3, 1, 64, 4);
    ck_case(&w, op_live(&w, 32), 1);
    ck_free(&w);
    /* many clusters (delta = 0, random keys): several blocks and capacity
     * doublings, the index with nnd bounds */
    const char *many[] = { "subgen:delta=0,t=2,s=16", "subgen:delta=0,t=2,s=16,index=0" };
    for (int k = 0; k < 2; k++) {
        ck_make(&w, many[k], Kr, V, Q, d, dv, 1500, 1, 0, 1500, 5);
        ck_case(&w, op_live(&w, 16), 1);
        ck_free(&w);
    }

    /* the cluster cap active: delta = 0.3 on random keys would open a cluster
     * per key; with clusters=40 delta doubles and clusters merge, mid-run */
    const char *capped[] = { "subgen:delta=0.3,t=4,s=32,clusters=40", "subgen:delta=0.3,t=4,s=32,clusters=40,index=0",
                             "subgen:delta=0,t=4,s=32,clusters=24" };
    for (int k = 0; k < 3; k++) {
        ck_make(&w, capped[k], Kr, V, Q, d, dv, 1500, 1, 0, 1500, 9);
        ck_case(&w, op_live(&w, 32), 1);
        ck_malformed(&w, op_after(&w, 700));
        ck_free(&w);
    }
    /* budget=, rank 1 of 2 */
    ck_make(&w, "subgen:delta=0.3,t=4,budget=20%", Kr, V, Q, d, dv, 1500, 2, 1, 64, 10);
    ck_case(&w, -1, 0);
    ck_malformed(&w, op_after(&w, 300));
    ck_free(&w);

    /* joint=1: values in the reservoirs (exact regime, clustered with and
     * without the index, the cap merging reservoirs, budget= at rank 1 of 2) */
    ck_make(&w, "subgen:delta=0,t=600,joint=1,seed=3,clusters=100000", Kr, V, Q, d, dv, 500, 1, 0, 500, 11);
    ck_case(&w, -1, 0);
    ck_free(&w);
    const char *jcl[] = { "subgen:delta=1.5,t=8,joint=1,seed=7", "subgen:delta=1.5,t=8,joint=1,seed=7,index=0" };
    for (int k = 0; k < 2; k++) {
        ck_make(&w, jcl[k], Kc, V, Q, d, dv, n, 1, 0, n, 12);
        ck_case(&w, -1, 0);
        ck_free(&w);
    }
    ck_make(&w, "subgen:delta=0.3,t=4,clusters=40,joint=1", Kr, V, Q, d, dv, 1500, 1, 0, 1500, 13);
    ck_case(&w, -1, 0);
    ck_malformed(&w, op_after(&w, 700));
    ck_free(&w);
    ck_make(&w, "subgen:delta=0.3,budget=20%,joint=1", Kr, V, Q, d, dv, 1500, 2, 1, 64, 14);
    ck_case(&w, -1, 0);
    ck_malformed(&w, op_after(&w, 300));
    ck_free(&w);
    ck_make(&w, "subgen:delta=1.5,t=4,joint=1", Kc, V, Q, d, dv, 300, 1, 0, 300, 15);
    ck_malformed(&w, op_after(&w, 40));
    ck_malformed(&w, 0);
    ck_free(&w);

    /* malformed states: small ones, the buffer dropped and alive */
    const char *small[] = { "subgen:delta=1.5,t=4,s=8", "subgen:delta=1.5,t=4,s=64,index=0",
                            "subgen:delta=0,t=2,s=3" };
    for (int k = 0; k < 3; k++) {
        ck_make(&w, small[k], k == 2 ? Kr : Kc, V, Q, d, dv, 300, 1, 0, 300, 6);
        ck_malformed(&w, op_after(&w, 40));
        ck_free(&w);
    }
    /* an empty state (nothing ingested) loads, a corrupted one does not */
    ck_make(&w, "subgen:delta=1.5,t=4,s=8", Kc, V, Q, d, dv, 300, 1, 0, 300, 7);
    ck_malformed(&w, 0);
    ck_free(&w);

    /* max_bytes is reached when every token opens a cluster and the buffer
     * holds them all (s >= n, no zero values) */
    for (int k = 0; k < 3; k++) {
        const char *sp = k == 2 ? "subgen:delta=0,t=3,joint=1,clusters=100000" : k ? "subgen:delta=0,t=3,s=400,index=0,clusters=100000" : "subgen:delta=0,t=3,s=400,clusters=100000";
        kv_method_ctx c = mkctx(d, dv, 300);
        c.shard_tokens = 300;
        void *g = make(sp, &c);
        int64_t mb = ops->max_bytes(g);
        size_t peak = 0;
        for (int64_t i = 0; i < 300; i += 30) {
            ingest(g, Kr, Kr, d, dv, i, 30); /* values: the first dv key coordinates, never 0 */
            size_t by = ops->bytes(g);
            peak = by > peak ? by : peak;
        }
        CHECK(mb == (int64_t)peak, "%s: max_bytes %lld, worst-case peak %zu", sp, (long long)mb, peak);
        c.shard_tokens = 0; /* unknown: n_total */
        void *h = make(sp, &c);
        CHECK(ops->max_bytes(h) == mb, "%s: shard_tokens = 0 does not fall back to n_total", sp);
        c.shard_tokens = 100;
        ops->free(h);
        h = make(sp, &c);
        CHECK(ops->max_bytes(h) < mb, "%s: a smaller shard gives no smaller bound", sp);
        ops->free(h);
        ops->free(g);
    }
    free(Kc); free(Kr); free(V); free(Q);
}

/* ---- 9. the cluster cap and budget= ---------------------------------------- */

static int64_t nclusters(const void *g)
{
    kv_method_extra x = { -1, -1, 0 };
    ops->extra(g, &x);
    return x.clusters;
}

/* clusters <= cap at every step where an uncapped run opens thousands;
 * index=0/1 and any blocking give bitwise the same states; P ranks keep
 * their shares */
static void test_cap(void)
{
    int d = 16, dv = 8, nq = 16;
    int64_t n = 4000, cap = 50;
    kv_method_ctx c = mkctx(d, dv, n);
    kv_rng r;
    kv_rng_seed(&r, 11, 0, 0);
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
    gauss(&r, K, (size_t)n * d, 1.0); /* members ~sqrt(2 d) = 5.7 apart: delta = 0.5 joins none */
    shifted(&r, V, n, dv);
    gauss(&r, Q, (size_t)nq * d, 1.0);
    size_t sl = KV_PSTATE_LEN(dv), sz = sizeof(double) * nq * sl;
    double *a = malloc(sz), *b = malloc(sz), *ex = malloc(sz);
    exact_states(Q, nq, K, V, n, &c, ex);

    void *g = make("subgen:delta=0.5,t=4,s=64,clusters=100000", &c);
    ingest(g, K, V, d, dv, 0, (size_t)n);
    int64_t open = nclusters(g);
    CHECK(open > 3000, "uncapped: %lld clusters, want > 3000 (the cap test would test nothing)", (long long)open);
    ops->free(g);

    const char *sp[] = { "subgen:delta=0.5,t=4,s=64,clusters=50", "subgen:delta=0.5,t=4,s=64,clusters=50,index=0" };
    for (int k = 0; k < 2; k++) {
        g = make(sp[k], &c);
        int64_t worst = 0, done = 0;
        while (done < n) {
            size_t len = (size_t)(1 + kv_rng_below(&r, 80));
            if (done + (int64_t)len > n) len = (size_t)(n - done);
            ingest(g, K, V, d, dv, done, len);
            done += (int64_t)len;
            int64_t nc = nclusters(g);
            worst = nc > worst ? nc : worst;
        }
        CHECK(worst <= cap && worst >= cap / 2, "%s: up to %lld clusters (cap %lld)", sp[k], (long long)worst,
              (long long)cap);
        ops->partial(g, Q, nq, n, k ? b : a);
        ops->free(g);
    }
    CHECK(!memcmp(a, b, sz), "cap active: index=0 and index=1 differ");
    run_states(sp[0], &c, K, V, n, 1, Q, nq, b);
    CHECK(!memcmp(a, b, sz), "cap active: blocks of 1 differ from random blocks");
    double e = mean_rel(a, ex, nq, dv);
    printf("cap %lld on %lld spread keys (%lld uncapped): mean relative error %.3g\n", (long long)cap, (long long)n,
           (long long)open, e);
    CHECK(isfinite(e) && e < 0.5, "cap active: mean relative error %g", e);

    /* P ranks: each holds at most its share ceil(cap shard / n) */
    for (int P = 2; P <= 4; P++) {
        int64_t total = 0;
        for (int rank = 0; rank < P; rank++) {
            kv_method_ctx cr = c;
            cr.rank = rank;
            cr.nranks = P;
            cr.shard_tokens = shard_of(n, P, rank, 64);
            int64_t share = kv_rank_share(&cr, cap), worst = 0;
            g = make(sp[0], &cr);
            for (int64_t s0 = (int64_t)rank * 64; s0 < n; s0 += (int64_t)P * 64) {
                ingest(g, K, V, d, dv, s0, (size_t)(n - s0 < 64 ? n - s0 : 64));
                int64_t nc = nclusters(g);
                worst = nc > worst ? nc : worst;
            }
            CHECK(worst <= share, "P=%d rank %d: %lld clusters, share %lld", P, rank, (long long)worst, (long long)share);
            total += nclusters(g);
            ops->free(g);
        }
        CHECK(total <= cap + P, "P=%d: %lld clusters over ranks, cap %lld", P, (long long)total, (long long)cap);
    }
    free(K); free(V); free(Q); free(a); free(b); free(ex);
}

/* The default cap (no clusters= or budget=) is derived from exact's memory:
 * on keys that cluster at no scale (random, head_dim 8 as in the bundled
 * model, and d = 64), with delta = 0 (every distinct key a cluster) or tiny,
 * the clusters' part never exceeds half of what exact holds for the same
 * prefix of n tokens, so with s <= n / 4 the whole sketch (its l2 samples and
 * exact buffer: at most s rows of key and value, twice counted) stays within
 * exact's n (d + dv) 4 bytes at every step; index=0 and 1 get the same cap,
 * hence the same answers. */
static void test_default_cap(void)
{
    struct { int d, dv; int64_t n; const char *sp; } cs[] = {
        { 8, 8, 4096, "subgen:delta=0" }, { 8, 8, 4096, "subgen:delta=0.01" },
        { 8, 8, 4096, "subgen:delta=0.5,t=16,s=256" }, { 8, 8, 4096, "subgen:delta=0,joint=1" },
        { 64, 64, 2048, "subgen:delta=0.01" }, { 64, 32, 2048, "subgen:delta=0.01,t=64,joint=1" },
    };
    for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
        int d = cs[k].d, dv = cs[k].dv, nq = 8;
        int64_t n = cs[k].n;
        kv_method_ctx c = mkctx(d, dv, n);
        c.shard_tokens = n;
        kv_rng r;
        kv_rng_seed(&r, 21, (uint64_t)k, 0);
        float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
        gauss(&r, K, (size_t)n * d, 1.0);
        gauss(&r, V, (size_t)n * dv, 1.0);
        gauss(&r, Q, (size_t)nq * d, 1.0);
        size_t sz = sizeof(double) * nq * KV_PSTATE_LEN(dv);
        double *a = malloc(sz), *b = malloc(sz);
        double exact = (double)n * (d + dv) * sizeof(float);
        for (int ix = 0; ix < 2; ix++) {
            char spec[128];
            snprintf(spec, sizeof spec, "%s%s", cs[k].sp, ix ? ",index=0" : "");
            void *g = make(spec, &c);
            size_t peak = 0;
            for (int64_t i = 0; i < n; i += 256) {
                ingest(g, K, V, d, dv, i, (size_t)(n - i < 256 ? n - i : 256));
                size_t by = ops->bytes(g);
                peak = by > peak ? by : peak;
            }
            CHECK((double)peak <= exact, "%s, d %d, n %lld: peak %zu bytes > exact's %.0f", spec, d, (long long)n,
                  peak, exact);
            CHECK((double)ops->max_bytes(g) <= exact, "%s: max_bytes %lld > exact's %.0f", spec,
                  (long long)ops->max_bytes(g), exact);
            ops->partial(g, Q, nq, n, ix ? b : a);
            if (!ix) printf("default cap: %s, d %d, n %lld: peak %.1f%% of exact, %lld clusters\n", spec, d,
                            (long long)n, 100.0 * (double)peak / exact, (long long)nclusters(g));
            ops->free(g);
        }
        CHECK(!memcmp(a, b, sz), "%s: index=0 and index=1 differ under the default cap", cs[k].sp);
        free(K); free(V); free(Q); free(a); free(b);
    }
}

/* Merging two clusters' reservoirs is exact: after the cap merges a cluster
 * of 30 keys (reservoir of 8) with one of 50, each of the 80 members is in
 * the merged reservoir of 8 with probability 8/80. */
static void test_merge_uniform(void)
{
    int d = 2, dv = 1, trials = 3000;
    int64_t n = 81;
    float K[81 * 2], V[81];
    for (int i = 0; i < 80; i++) { /* member id in the second coordinate */
        K[2 * i] = i < 30 ? 0.0f : 10.0f;
        K[2 * i + 1] = 1e-3f * (float)i;
        V[i] = 1.0f;
    }
    K[160] = 100.0f; /* opens a third cluster: the cap of 2 merges the first two */
    K[161] = 0.0f;
    V[80] = 1.0f;
    int hits[80] = { 0 }, bad = 0;
    for (int tr = 0; tr < trials; tr++) {
        kv_method_ctx c = mkctx(d, dv, n);
        c.seed = (uint64_t)tr;
        void *g = make("subgen:delta=1,t=8,s=4,clusters=2,index=0", &c);
        ingest(g, K, V, d, dv, 0, (size_t)n);
        kv_buf b;
        save_state(g, &b);
        cklayout L;
        ck_layout(b.data, &L);
        int64_t cnt[2];
        memcpy(cnt, b.data + L.cnt + 8, sizeof cnt);
        int seen[80] = { 0 };
        if (L.nc != 2 || cnt[0] != 80 || cnt[1] != 1) bad++;
        else
            for (int j = 0; j < 8; j++) {
                float key[2];
                memcpy(key, b.data + L.res + 8 + (size_t)j * sizeof key, sizeof key);
                int id = (int)lrintf(key[1] * 1000.0f);
                if (id < 0 || id >= 80 || seen[id]++ || (id < 30) != (key[0] == 0.0f)) bad++;
                else hits[id]++;
            }
        kv_buf_free(&b);
        ops->free(g);
    }
    CHECK(bad == 0, "merged reservoirs: %d trials with wrong counts or keys", bad);
    int off = 0;
    for (int i = 0; i < 80; i++) off += !within((double)hits[i] / trials, 0.1, trials);
    CHECK(off == 0, "merged reservoir: %d of 80 members off their probability 8/80", off);
    printf("merged reservoirs: member frequencies 8/80 within 5 sd (%d trials)\n", trials);
}

/* P emulated ranks (chunk-cyclic, chunks of C, random blocks): the peak of
 * bytes() summed over ranks, checked after every ingest, stays <= budget */
static void budget_run(const kv_method_ops *m, const char *spec, int P, const float *K, const float *V, const float *Q,
                       int nq, const kv_method_ctx *c, int64_t B, double *err_out, size_t *peak_out)
{
    int64_t n = c->n_total, C = 64;
    void *inst[4] = { 0 };
    kv_spec *sp = NULL;
    int cnt = 0;
    kv_err err;
    kv_err_clear(&err);
    CHECK(!kv_spec_parse_list(spec, &sp, &cnt, &err), "%s: %s", spec, err.msg);
    for (int rank = 0; rank < P; rank++) {
        kv_method_ctx cr = *c;
        cr.rank = rank;
        cr.nranks = P;
        cr.shard_tokens = shard_of(n, P, rank, C);
        kv_spec_reset(&sp[0]);
        int rc = m->create(&sp[0], &cr, &inst[rank], &err);
        CHECK(rc == 0, "%s P=%d: %s", spec, P, err.msg);
        if (rc) exit(1);
    }
    kv_rng r;
    kv_rng_seed(&r, 5, (uint64_t)P, 0);
    size_t peak = 0, sl = KV_PSTATE_LEN(c->dv);
    int over = 0;
    for (int64_t done = 0; done < n;) {
        int rank = (int)((done / C) % P);
        int64_t end = (done / C + 1) * C < n ? (done / C + 1) * C : n;
        int64_t len = 1 + (int64_t)kv_rng_below(&r, (uint64_t)(end - done));
        CHECK(m->ingest(inst[rank], K + done * c->d, V + done * c->dv, done, (size_t)len, &err) == 0, "ingest: %s",
              err.msg);
        done += len;
        size_t sum = 0;
        for (int q = 0; q < P; q++) sum += m->bytes(inst[q]);
        peak = sum > peak ? sum : peak;
        if (sum > (size_t)B && !over++)
            CHECK(0, "%s P=%d: %zu bytes over ranks after %lld tokens, budget %lld", spec, P, sum, (long long)done,
                  (long long)B);
    }
    double *st = malloc(sizeof(double) * sl * nq), *one = malloc(sizeof(double) * sl * nq),
           *ex = malloc(sizeof(double) * sl * nq);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, c->dv);
    for (int rank = 0; rank < P; rank++) {
        m->partial(inst[rank], Q, nq, n, one);
        for (int q = 0; q < nq; q++) kv_partial_merge(st + q * sl, one + q * sl, c->dv);
        m->free(inst[rank]);
    }
    exact_states(Q, nq, K, V, n, c, ex);
    *err_out = mean_rel(st, ex, nq, c->dv);
    *peak_out = peak;
    free(st); free(one); free(ex); free(sp);
}

static void test_budget(void)
{
    int d = 16, dv = 16, nq = 16;
    int64_t n = 6000;
    kv_method_ctx c = mkctx(d, dv, n);
    kv_rng r;
    kv_rng_seed(&r, 12, 0, 0);
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
    float *Kc = malloc(sizeof(float) * n * d);
    gauss(&r, K, (size_t)n * d, 1.0);
    clustered(&r, Kc, n, d, 8, 1.0, 0.1);
    shifted(&r, V, n, dv);
    gauss(&r, Q, (size_t)nq * d, 1.0);
    const kv_method_ops *wsg = kv_method_find("window+subgen");
    CHECK(wsg != NULL, "window+subgen not registered");
    struct { const kv_method_ops *m; const char *spec; const float *K; double frac; } cs[] = {
        { ops, "subgen:delta=0.3,budget=5%", K, 0.05 },          /* spread keys: the cap fills */
        { ops, "subgen:delta=0.3,budget=20%,t=4", K, 0.20 },
        { ops, "subgen:delta=0.3,budget=60000,index=0", K, 0 },  /* bytes */
        { ops, "subgen:delta=1,budget=10%", Kc, 0.10 },          /* clustered: the cap does not bind */
        { wsg, "window+subgen:delta=0.3,budget=10%", K, 0.10 },
        { wsg, "window+subgen:delta=1,budget=25%,t=8", Kc, 0.25 },
        { ops, "subgen:delta=0.3,budget=5%,joint=1", K, 0.05 },  /* joint: the budget goes to clusters */
        { ops, "subgen:delta=0.3,budget=20%,t=4,joint=1", K, 0.20 },
        { ops, "subgen:delta=1,budget=10%,joint=1", Kc, 0.10 },
        { wsg, "window+subgen:delta=1,budget=25%,joint=1", Kc, 0.25 },
    };
    for (size_t k = 0; k < sizeof cs / sizeof *cs; k++) {
        int64_t B = cs[k].frac > 0 ? (int64_t)(cs[k].frac * n * (d + dv) * 4) : 60000;
        for (int P = 1; P <= 4; P++) {
            double e;
            size_t peak;
            budget_run(cs[k].m, cs[k].spec, P, cs[k].K, V, Q, nq, &c, B, &e, &peak);
            printf("%s P=%d: peak %zu of %lld bytes (%.0f%%), mean relative error %.3g\n", cs[k].spec, P, peak,
                   (long long)B, 100.0 * (double)peak / (double)B, e);
            CHECK(isfinite(e) && e < 1.0, "%s P=%d: mean relative error %g", cs[k].spec, P, e);
            /* on spread keys the cap fills: the rule must not leave most of
             * the budget unused (the exact buffer is gone before the
             * clusters fill, so about 3/4 is the most to expect) */
            if (cs[k].K == K && cs[k].m == ops)
                CHECK(peak >= 0.5 * (double)B, "%s P=%d: peak %zu uses under 50%% of %lld", cs[k].spec, P, peak,
                      (long long)B);
        }
    }
    free(K); free(Kc); free(V); free(Q);
}

static void test_budget_specs(void)
{
    kv_method_ctx c = mkctx(8, 8, 10000);
    const char *bad[] = { "subgen:budget=10%,s=64", "subgen:clusters=10,budget=1MiB", "subgen:clusters=0",
                          "subgen:clusters=-2", "subgen:budget=0%", "subgen:budget=100", /* < one sample + cluster */
                          "subgen:budget=abc", "subgen:joint=1,s=64", "subgen:joint=2", "subgen:joint=-1" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        kv_err err;
        void *st;
        int rc = create(bad[i], &c, &st, &err);
        CHECK(rc == KV_EINPUT && st == NULL && err.msg[0] && !strchr(err.msg, '\n'), "'%s' accepted (rc %d)", bad[i], rc);
        if (i < 2) CHECK(strstr(err.msg, "not both") != NULL, "'%s': %s", bad[i], err.msg);
        if (st) ops->free(st);
    }
    const char *good[] = { "subgen:budget=10%", "subgen:budget=10%,t=4,delta=0.5,index=0", "subgen:clusters=1",
                           "subgen:budget=200tok", "subgen:joint=1,budget=10%", "subgen:joint=1,t=4,budget=5%",
                           "subgen:joint=0,s=8" };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        kv_err err;
        void *st;
        int rc = create(good[i], &c, &st, &err);
        CHECK(rc == 0 && st, "'%s' rejected: %s", good[i], err.msg);
        if (st) ops->free(st);
    }
    const kv_method_ops *keep = ops;
    ops = kv_method_find("window+subgen");
    const char *wbad[] = { "window+subgen:budget=10%,W=64", "window+subgen:budget=10%,s=8",
                           "window+subgen:budget=10%,clusters=8", "window+subgen:budget=200",
                           "window+subgen:joint=1,s=8" };
    for (size_t i = 0; i < sizeof wbad / sizeof *wbad; i++) {
        kv_err err;
        void *st;
        int rc = create(wbad[i], &c, &st, &err);
        CHECK(rc == KV_EINPUT && st == NULL && err.msg[0], "'%s' accepted (rc %d)", wbad[i], rc);
        if (st) ops->free(st);
    }
    ops = keep;
}

/* ---- 10. joint=1: the reservoirs carry values ------------------------------ */

/* Largest rounding error of an exact-regime state's output against
 * kv_attn_fold's, as a fraction of what the arithmetic allows (<= 1 passes).
 * Both compute the logits a = scale <q, k> in float: a d-term dot product
 * is within (d + 1) eps |q| |k| of the real one, and the scale, the shift by
 * the max and expf (relative error ~eps) add a few eps of |a| + 1: so each
 * logit of either side is within D = (d + 6) eps (scale |q| max|k| + 1), and
 * the two sides within 2 D.  Logits moved by at most 2 D change the softmax
 * weights by |p' - p|_1 <= 2 (e^{4 D} - 1), hence
 * |z - z*| <= 2 (e^{4 D} - 1) max|v| (the double sums add far less). */
/* |x|^2 in double */
static double norm2f(const float *x, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

static double vs_bound(const double *st, const double *ex, const float *Q, int nq, const float *K, const float *V,
                       int64_t p, const kv_method_ctx *c)
{
    int d = c->d, dv = c->dv;
    size_t sl = KV_PSTATE_LEN(dv);
    double kmax = 0, vmax = 0, worst = 0;
    for (int64_t i = 0; i < p; i++) {
        kmax = fmax(kmax, sqrt(norm2f(K + i * d, d)));
        vmax = fmax(vmax, sqrt(norm2f(V + i * dv, dv)));
    }
    for (int q = 0; q < nq; q++) {
        double zs[512], za[512], dz = 0;
        kv_partial_output(ex + q * sl, dv, zs);
        kv_partial_output(st + q * sl, dv, za);
        for (int x = 0; x < dv; x++) dz += (za[x] - zs[x]) * (za[x] - zs[x]);
        double D = (d + 6) * FLT_EPSILON * (c->scale * sqrt(norm2f(Q + q * d, d)) * kmax + 1.0);
        worst = fmax(worst, sqrt(dz) / (2.0 * expm1(4.0 * D) * vmax));
    }
    return worst;
}

static void test_joint(void)
{
    int d = 16, dv = 8, nq = 10;
    int64_t n = 600;
    kv_method_ctx c = mkctx(d, dv, n);
    kv_rng r;
    kv_rng_seed(&r, 21, 0, 0);
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
    gauss(&r, K, (size_t)n * d, 1.0);
    shifted(&r, V, n, dv);
    gauss(&r, Q, (size_t)nq * d, 2.0);
    for (int64_t i = 0; i < n; i += 7) memset(V + i * dv, 0, sizeof(float) * dv); /* held all the same */
    size_t sl = KV_PSTATE_LEN(dv);
    double *st = malloc(sizeof(double) * nq * sl), *ex = malloc(sizeof(double) * nq * sl);

    /* delta = 0, t >= n on distinct keys: every token its own cluster with
     * its value, weights n_c / |R_c| = 1: exact attention at every prefix */
    void *g = make("subgen:delta=0,t=600,joint=1,seed=3,clusters=100000", &c);
    int64_t pts[] = { 1, 10, 60, 333, 600 }, done = 0;
    size_t by[5];
    double worst = 0;
    for (int k = 0; k < 5; k++) {
        while (done < pts[k]) {
            size_t b = (size_t)(1 + kv_rng_below(&r, 40));
            if (done + (int64_t)b > pts[k]) b = (size_t)(pts[k] - done);
            ingest(g, K, V, d, dv, done, b);
            done += (int64_t)b;
        }
        ops->partial(g, Q, nq, pts[k], st);
        exact_states(Q, nq, K, V, pts[k], &c, ex);
        worst = fmax(worst, vs_bound(st, ex, Q, nq, K, V, pts[k], &c));
        kv_method_extra x;
        ops->extra(g, &x);
        CHECK(x.clusters == pts[k] && x.kept_tokens == pts[k], "joint p=%lld: %lld clusters, %lld kept",
              (long long)pts[k], (long long)x.clusters, (long long)x.kept_tokens);
        by[k] = ops->bytes(g);
    }
    CHECK(worst <= 1.0, "joint exact regime: error %.3g of the rounding bound", worst);
    /* 10 -> 60 tokens: the cluster arrays stay at 64 slots, so bytes() grows
     * by exactly 50 reservoir rows of key and value (no l2 samples, no buffer) */
    CHECK(by[2] - by[1] == (size_t)50 * (d + dv) * sizeof(float), "joint: bytes() grew by %zu for 50 rows, want %zu",
          by[2] - by[1], (size_t)50 * (d + dv) * sizeof(float));
    printf("joint exact mode: error %.3g of the rounding bound\n", worst);
    ops->free(g);

    /* each key three times with different values: delta = 0 merges the
     * duplicates, t = 3 holds all three values: still exact */
    float *K3 = malloc(sizeof(float) * n * d);
    for (int64_t i = 0; i < n; i++) memcpy(K3 + i * d, K + (i % 200) * d, sizeof(float) * d);
    g = make("subgen:delta=0,t=3,joint=1,clusters=100000", &c);
    ingest(g, K3, V, d, dv, 0, (size_t)n);
    CHECK(nclusters(g) == 200, "joint duplicates: %lld clusters, want 200", (long long)nclusters(g));
    ops->partial(g, Q, nq, n, st);
    exact_states(Q, nq, K3, V, n, &c, ex);
    double e3 = vs_bound(st, ex, Q, nq, K3, V, n, &c);
    CHECK(e3 <= 1.0, "joint duplicates, t = 3: error %.3g of the rounding bound", e3);
    ops->free(g);

    /* index=0 and 1 give the same bits, also with the cap merging
     * reservoirs (values move with their keys), in blocks of 1 or 1000 */
    int64_t nb = 4000;
    int db = 32, nqb = 20;
    kv_method_ctx cb = mkctx(db, dv, nb);
    float *Kb = malloc(sizeof(float) * nb * db), *Vb = malloc(sizeof(float) * nb * dv),
          *Qb = malloc(sizeof(float) * nqb * db);
    clustered(&r, Kb, nb, db, 40, 1.0, 0.1);
    shifted(&r, Vb, nb, dv);
    gauss(&r, Qb, (size_t)nqb * db, 1.0);
    size_t sz = sizeof(double) * nqb * sl;
    double *a = malloc(sz), *b = malloc(sz);
    const char *pairs[][2] = {
        { "subgen:delta=1,t=8,joint=1", "subgen:delta=1,t=8,joint=1,index=0" },
        { "subgen:delta=0.3,t=4,clusters=24,joint=1", "subgen:delta=0.3,t=4,clusters=24,joint=1,index=0" },
    };
    for (int k = 0; k < 2; k++) {
        run_states(pairs[k][0], &cb, Kb, Vb, nb, 1000, Qb, nqb, a);
        run_states(pairs[k][1], &cb, Kb, Vb, nb, 1000, Qb, nqb, b);
        CHECK(!memcmp(a, b, sz), "%s: index=0 differs", pairs[k][0]);
        run_states(pairs[k][1], &cb, Kb, Vb, nb, 1, Qb, nqb, b);
        CHECK(!memcmp(a, b, sz), "%s: one token per ingest differs", pairs[k][1]);
    }

    /* attention peaked on one cluster (queries along one of its keys): the
     * query-blind l2 samples miss it, the cluster's own samples do not.  At
     * the same budget joint must beat the paper's estimator. */
    for (int q = 0; q < nqb; q++)
        for (int i = 0; i < db; i++) Qb[q * db + i] = 2.0f * Kb[(int64_t)(q % 4) * db + i];
    exact_states(Qb, nqb, Kb, Vb, nb, &cb, b);
    double ep = 0, ej = 0;
    const char *eq[] = { "subgen:delta=1,budget=10%", "subgen:delta=1,budget=10%,joint=1" };
    for (int k = 0; k < 2; k++) {
        run_states(eq[k], &cb, Kb, Vb, nb, 1000, Qb, nqb, a);
        *(k ? &ej : &ep) = mean_rel(a, b, nqb, dv);
    }
    printf("peaked attention, budget=10%%: mean relative error paper %.3g, joint %.3g\n", ep, ej);
    CHECK(ej < 0.5 * ep, "joint (%.3g) not clearly better than paper (%.3g) on peaked attention", ej, ep);
    free(K); free(V); free(Q); free(K3); free(st); free(ex); free(Kb); free(Vb); free(Qb); free(a); free(b);
}

int main(void)
{
    ops = kv_method_find("subgen");
    CHECK(ops != NULL, "subgen not registered");
    if (!ops) return kv_test_result("test_subgen");
    void (*tests[])(void) = { test_specs, test_samplers, test_exact, test_clustered, test_accuracy, test_seeds,
                              test_ranks, test_checkpoint, test_cap, test_default_cap, test_merge_uniform,
                              test_budget_specs, test_budget, test_joint };
    for (int k = 0; k < (int)(sizeof tests / sizeof tests[0]); k++)
        if (kv_test_part(k)) tests[k](); /* KV_TEST_PART: ctest runs the parts side by side */
    return kv_test_result("test_subgen");
}
