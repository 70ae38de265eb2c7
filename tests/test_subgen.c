/* test_subgen.c - SubGen (src/method_subgen.c) and its samplers
 * (src/sampler.c) against exact attention and against their probabilities. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "attn.h"
#include "method.h"
#include "partial.h"
#include "rng.h"
#include "sampler.h"
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
    void *g = make("subgen:delta=0,t=600,s=600,seed=3", &c);
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
    const char *dup[] = { "subgen:delta=0,t=300,s=300", "subgen:delta=0,t=1,s=300" };
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
        "subgen:delta=0.5,t=16,s=128,foo=1", "subgen:delta=,t=16,s=128", "subgen:delta=0.5,t=16",
        "subgen:delta=abc,t=16,s=128", "subgen:delta=0.5,t=1.5,s=128", "subgen:delta=0.5,t=16,s=128,seed=-3",
        "subgen:delta=0.5,t=16,s=128,index=2", "subgen",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        kv_err err;
        void *st;
        int rc = create(bad[i], &c, &st, &err);
        CHECK(rc == KV_EINPUT && st == NULL && err.msg[0], "'%s' accepted (rc %d)", bad[i], rc);
        if (st) ops->free(st);
    }
    const char *good[] = { "subgen:delta=0.5,t=16,s=128", "subgen:delta=0,t=1,s=1,seed=7,name=sg",
                           "subgen:delta=1e3,t=16,s=128,index=0" };
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
}

/* ---- 7. ranks: chunk-cyclic shards merged --------------------------------- */
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
    const char *specs[] = { "subgen:delta=0,t=4096,s=4096", "subgen:delta=2.5,t=32,s=128" };
    double e1 = 0;
    for (int k = 0; k < 2; k++) {
        for (int P = 1; P <= 4; P++) {
            for (int q = 0; q < nq; q++) {
                kv_partial_clear(mg + q * sl, dv);
                kv_partial_clear(mgm + q * sl, dv);
            }
            for (int rank = 0; rank < P; rank++) {
                kv_method_ctx cr = c;
                cr.rank = rank;
                cr.nranks = P;
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
            if (k == 0) {
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

int main(void)
{
    ops = kv_method_find("subgen");
    CHECK(ops != NULL, "subgen not registered");
    if (!ops) return kv_test_result("test_subgen");
    test_specs();
    test_samplers();
    test_exact();
    test_clustered();
    test_accuracy();
    test_seeds();
    test_ranks();
    return kv_test_result("test_subgen");
}
