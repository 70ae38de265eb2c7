/* test_budget_scope.c - --budget-scope layer|trace for h2o, tova and snapkv
 * (ALGORITHMS.md section 4g): ns streams share one budget, and the lowest
 * scored candidates of all of them go.
 *
 * ns = 4 streams (one layer of 4 kv heads, ctx budget_scope layer) run on
 * P = 1..4 emulated ranks as the replay driver runs them (replay/decide.c:
 * one decision group of ns streams; the halos per stream; the groups'
 * candidate lists merged over the ranks in rank order).  The heads differ:
 * their keys are scaled 0.3, 1, 2 and 4, so attention runs from flat to
 * peaked.  Checked:
 *   - the answers of every stream at every P equal the brute-force
 *     sequential group rule (evref.h: evref_group_query) to rounding, and
 *     every stream holds what the brute force holds;
 *   - the bytes summed over the ranks and streams at every decision point
 *     stay within B + ns every tokens (and the kept query rows);
 *   - the pool moves tokens between heads (the streams' counts differ by
 *     more than ns at some point), and B is the scope's total;
 *   - budget= at layer scope holds ns times one stream's share;
 *   - tova scope=layer with a layer budget scope, and a layer scope without
 *     n_kv_heads in snapkv's tokens check, are refused in one line. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/partial.h"
#include "methods/method.h"
#include "evref.h"
#include "testutil.h"

#define NS 4
#define MAXP 4
#define N 700
#define D 8
#define DV 4
#define EVERY 16

typedef struct {
    float K[NS][N * D], V[NS][N * DV];
    double vmax;
} data;

static void data_gen(data *x)
{
    static const double sharp[NS] = { 0.3, 1, 2, 4 };
    kv_rng r;
    kv_rng_seed(&r, 11, 5, 3);
    x->vmax = 0;
    for (int k = 0; k < NS; k++) {
        for (int i = 0; i < N * D; i++) x->K[k][i] = (float)(sharp[k] * kv_rng_normal(&r));
        for (int i = 0; i < N * DV; i++) {
            x->V[k][i] = (float)(0.5 + kv_rng_normal(&r));
            x->vmax = fabs(x->V[k][i]) > x->vmax ? fabs(x->V[k][i]) : x->vmax;
        }
    }
}

static kv_method_ctx make_ctx(int scope, int kv_heads)
{
    kv_method_ctx c;
    memset(&c, 0, sizeof c);
    c.d = D;
    c.dv = DV;
    c.scale = 1.0 / sqrt((double)D);
    c.n_total = N;
    c.nranks = 1;
    c.semantics = KV_SEM_FULL;
    c.q_group = 2;
    c.kv_heads = kv_heads;
    c.n_streams = NS;
    c.budget_scope = scope;
    return c;
}

/* P ranks x NS streams of one method; inst[r][k]. */
typedef struct {
    const kv_method_ops *ops;
    kv_spec *spec;
    void *inst[MAXP][NS];
    int P;
    int64_t C, fed;
    size_t epoch[MAXP], worst;
} gemu;

static int gemu_open(gemu *e, const char *text, const kv_method_ctx *base, int P, int64_t C, kv_err *err)
{
    int cnt;
    memset(e, 0, sizeof *e);
    if (kv_spec_parse_list(text, &e->spec, &cnt, err)) return err->code;
    e->ops = kv_method_find(e->spec[0].method);
    e->P = P;
    e->C = C;
    for (int r = 0; r < P; r++)
        for (int k = 0; k < NS; k++) {
            kv_method_ctx c = *base;
            c.rank = r, c.nranks = P, c.chunk = C, c.stream = k, c.shard_tokens = 0;
            for (int64_t t = 0; t < N; t += C)
                if ((t / C) % P == r) c.shard_tokens += N - t < C ? N - t : C;
            kv_spec_reset(&e->spec[0]);
            if (e->ops->create(&e->spec[0], &c, &e->inst[r][k], err)) return err->code;
        }
    return KV_OK;
}

static void gemu_close(gemu *e)
{
    for (int r = 0; r < e->P; r++)
        for (int k = 0; k < NS; k++)
            if (e->inst[r][k]) e->ops->free(e->inst[r][k]);
    free(e->spec);
}

static void sample(gemu *e)
{
    for (int r = 0; r < e->P; r++) {
        size_t b = 0;
        for (int k = 0; k < NS; k++) b += e->ops->bytes(e->inst[r][k]);
        if (b > e->epoch[r]) e->epoch[r] = b;
    }
}

static void end_epoch(gemu *e)
{
    size_t sum = 0;
    for (int r = 0; r < e->P; r++) sum += e->epoch[r], e->epoch[r] = 0;
    if (sum > e->worst) e->worst = sum;
}

static void feed(gemu *e, const data *x, int64_t p)
{
    for (; e->fed < p; e->fed++) {
        int r = (int)((e->fed / e->C) % e->P);
        kv_err err = { 0 };
        for (int k = 0; k < NS; k++)
            CHECK(e->ops->ingest(e->inst[r][k], x->K[k] + e->fed * D, x->V[k] + e->fed * DV, e->fed, 1, &err) == KV_OK,
                  "ingest: %s", err.msg);
        sample(e);
    }
}

/* One decision group of NS streams, as replay/decide.c runs it. */
static void decide(gemu *e, int64_t x, int at_query)
{
    const kv_method_ops *o = e->ops;
    CHECK(o->decide_group && o->decide_group(e->inst[0][0]) == NS, "decision group is not the %d streams", NS);
    int64_t need = o->decide_need(e->inst[0][0], x, at_query);
    for (int r = 0; r < e->P; r++)
        for (int k = 0; k < NS; k++)
            if (r || k) CHECK(o->decide_need(e->inst[r][k], x, at_query) == need, "need differs (rank %d stream %d)", r, k);
    end_epoch(e);
    if (need <= 0) return;
    int L = (int)(need + 1 + (o->decide_extra ? o->decide_extra(e->inst[0][0]) : 0));
    size_t hl = o->decide_halo_len ? o->decide_halo_len(e->inst[0][0], x) : 0;
    double *halo = calloc(NS * hl + 1, sizeof(double)), *part = calloc(hl + 1, sizeof(double));
    kv_evkey *g = malloc(sizeof(kv_evkey) * (size_t)L), *kk = malloc(sizeof(kv_evkey) * (size_t)L);
    for (int r = 0; r < e->P && hl; r++)
        for (int k = 0; k < NS; k++) {
            memset(part, 0, sizeof(double) * hl);
            o->decide_halo(e->inst[r][k], x, part);
            for (size_t i = 0; i < hl; i++) halo[k * hl + i] += part[i];
        }
    for (int r = 0; r < e->P; r++) {
        CHECK(o->decide_cands(e->inst[r], NS, x, hl ? halo : NULL, L, r ? kk : g) == KV_OK, "decide_cands");
        if (r) kv_evict_merge(g, kk, L);
    }
    for (int r = 0; r < e->P; r++) CHECK(o->decide_apply(e->inst[r], NS, x, g, need) == KV_OK, "decide_apply");
    sample(e);
    free(halo);
    free(part);
    free(g);
    free(kk);
}

/* Points up to p, then nq rows per stream (Q: NS x nq x D) answered into
 * st (NS x nq states) and fed back. */
static void gemu_query(gemu *e, const data *x, const float *Q, int nq, int64_t p, double *st)
{
    size_t sl = KV_PSTATE_LEN(DV);
    int64_t every = e->ops->decide_every(e->inst[0][0]);
    end_epoch(e);
    for (int64_t t = (e->fed / every + 1) * every; t < p; t += every) {
        feed(e, x, t);
        decide(e, t, 0);
    }
    feed(e, x, p);
    decide(e, p, 1);
    double tmp[4 * KV_PSTATE_LEN(DV)], ml[8];
    for (int k = 0; k < NS; k++) {
        double *sk = st + (size_t)k * nq * sl;
        for (int q = 0; q < nq; q++) kv_partial_clear(sk + q * sl, DV);
        for (int r = 0; r < e->P; r++) {
            CHECK(e->ops->partial(e->inst[r][k], Q + (size_t)k * nq * D, nq, p, tmp) == KV_OK, "partial");
            for (int q = 0; q < nq; q++) kv_partial_merge(sk + q * sl, tmp + q * sl, DV);
        }
        for (int q = 0; q < nq; q++) ml[2 * q] = sk[q * sl + KV_PS_M], ml[2 * q + 1] = sk[q * sl + KV_PS_L];
        for (int r = 0; r < e->P; r++)
            CHECK(e->ops->feedback(e->inst[r][k], Q + (size_t)k * nq * D, nq, p, ml) == KV_OK, "feedback");
    }
    sample(e);
}

static int64_t kept(const gemu *e, int k)
{
    int64_t n = 0;
    for (int r = 0; r < e->P; r++) {
        kv_method_extra ex = { -1, -1, 0 };
        e->ops->extra(e->inst[r][k], &ex);
        n += ex.kept_tokens;
    }
    return n;
}

static double out_diff(const double *a, const double *b, int n)
{
    size_t sl = KV_PSTATE_LEN(DV);
    double za[DV], zb[DV], worst = 0;
    for (int q = 0; q < n; q++) {
        kv_partial_output(a + q * sl, DV, za);
        kv_partial_output(b + q * sl, DV, zb);
        for (int c = 0; c < DV; c++) worst = fabs(za[c] - zb[c]) > worst ? fabs(za[c] - zb[c]) : worst;
    }
    return worst;
}

typedef struct {
    const char *spec;
    evref_kind kind;
    int64_t B, R, W, T, kern;
    int64_t slot, rows; /* bytes per held token (tova: + 16 of heap-key scratch; snapkv: + 4 of its order by index); per kept query row (every rank's kept rows counted once) */
    double alpha;       /* floor= (0.2 unless the spec says) */
    int64_t least;      /* each stream holds at least this after a decision (the floor; 0: unchecked) */
} scase;

/* floor=0.9: h2o keeps R + floor(0.9 (200 - 4 R) / 4) = 10 + 36, tova
 * floor(0.9 160 / 4) = 36, snapkv W + floor(0.9 (160 - 68 - 4 W) / 4) =
 * 5 + 16 per stream. */
static const scase cases[] = {
    { "h2o:tokens=200,recent=10", EVREF_H2O, 200, 10, 0, 0, 0, (D + DV) * 4 + 28, 0, 0.2, 0 },
    { "h2o:tokens=120,recent=2", EVREF_H2O, 120, 2, 0, 0, 0, (D + DV) * 4 + 28, 0, 0.2, 0 },
    { "h2o:tokens=200,recent=10,floor=0", EVREF_H2O, 200, 10, 0, 0, 0, (D + DV) * 4 + 28, 0, 0, 0 },
    { "h2o:tokens=200,recent=10,floor=0.9", EVREF_H2O, 200, 10, 0, 0, 0, (D + DV) * 4 + 28, 0, 0.9, 46 },
    { "tova:tokens=160", EVREF_TOVA, 160, 0, 0, 0, 0, (D + DV) * 4 + 40, 2 * (D * 4 + 16), 0.2, 0 },
    { "tova:tokens=160,floor=0", EVREF_TOVA, 160, 0, 0, 0, 0, (D + DV) * 4 + 40, 2 * (D * 4 + 16), 0, 0 },
    { "tova:tokens=160,floor=0.9", EVREF_TOVA, 160, 0, 0, 0, 0, (D + DV) * 4 + 40, 2 * (D * 4 + 16), 0.9, 36 },
    { "snapkv:tokens=160,window=5,period=17,kernel=5", EVREF_SNAPKV, 160, 0, 5, 4 * 17, 5, (D + DV) * 4 + 28,
      5 * 2 * (D * 4 + 24), 0.2, 0 },
    { "snapkv:tokens=160,window=5,period=17,kernel=5,floor=0.9", EVREF_SNAPKV, 160, 0, 5, 4 * 17, 5,
      (D + DV) * 4 + 28, 5 * 2 * (D * 4 + 24), 0.9, 21 },
};

static void test_case(const scase *c, const data *x)
{
    kv_method_ctx ctx = make_ctx(KV_SCOPE_LAYER, NS);
    for (int P = 1; P <= MAXP; P++) {
        gemu e;
        kv_err err = { 0 };
        int rc = gemu_open(&e, c->spec, &ctx, P, 29, &err);
        CHECK(rc == KV_OK, "%s: %s", c->spec, err.msg);
        if (rc) { gemu_close(&e); return; }
        evref h[NS];
        for (int k = 0; k < NS; k++) {
            evref_init(&h[k], c->kind, D, DV, x->K[k], x->V[k], N);
            h[k].B = c->B, h[k].R = c->R, h[k].W = c->W, h[k].T = c->T, h[k].kern = c->kern, h[k].alpha = c->alpha;
        }
        kv_rng r;
        kv_rng_seed(&r, 17, (uint64_t)P, (uint64_t)c->B);
        float Q[NS * 2 * D];
        double st[NS * 2 * KV_PSTATE_LEN(DV)], rs[NS * 2 * KV_PSTATE_LEN(DV)], worst = 0;
        double tol = (4.0 * (double)c->B + 32) * DBL_EPSILON * x->vmax;
        int64_t badn = 0, spread = 0, least = N;
        for (int64_t p = 1; p <= N; p += 1 + (int64_t)kv_rng_below(&r, 9)) {
            int nq = 1 + (int)kv_rng_below(&r, 2);
            for (int i = 0; i < NS * nq * D; i++) Q[i] = (float)(2.0 * kv_rng_normal(&r));
            gemu_query(&e, x, Q, nq, p, st);
            evref_group_query(h, NS, Q, nq, p, rs);
            double dd = out_diff(st, rs, NS * nq);
            worst = dd > worst ? dd : worst;
            int64_t lo = N, hi = 0;
            for (int k = 0; k < NS; k++) {
                badn += kept(&e, k) != h[k].n;
                lo = kept(&e, k) < lo ? kept(&e, k) : lo, hi = kept(&e, k) > hi ? kept(&e, k) : hi;
            }
            if (p > N / 2) least = lo < least ? lo : least; /* every decision evicts by then */
            spread = hi - lo > spread ? hi - lo : spread;
        }
        end_epoch(&e);
        size_t bound = (size_t)((c->B + NS * EVERY) * c->slot + NS * c->rows);
        int64_t lo = N, hi = 0, tot = 0;
        for (int k = 0; k < NS; k++) {
            int64_t n = kept(&e, k);
            lo = n < lo ? n : lo, hi = n > hi ? n : hi, tot += n;
        }
        CHECK(worst <= tol, "%s P=%d: differs from the group brute force by %.3g > %.3g", c->spec, P, worst, tol);
        CHECK(badn == 0, "%s P=%d: holds another count than the brute force %lld times", c->spec, P, (long long)badn);
        CHECK(e.worst <= bound, "%s P=%d: %zu bytes over ranks and streams > %zu", c->spec, P, e.worst, bound);
        CHECK(least >= c->least, "%s P=%d: a stream holds %lld < the floor's %lld", c->spec, P, (long long)least,
              (long long)c->least);
        CHECK(tot <= c->B && (spread > NS || c->alpha > 0.5), "%s P=%d: streams hold %lld in all (B %lld), at most %lld apart: not one "
              "shared pool", c->spec, P, (long long)tot, (long long)c->B, (long long)spread);
        printf("  %s P=%d: streams hold %lld..%lld of %lld; peak %zu bytes (bound %zu); vs brute force %.3g\n", c->spec,
               P, (long long)lo, (long long)hi, (long long)c->B, e.worst, bound, worst);
        for (int k = 0; k < NS; k++) evref_free(&h[k]);
        gemu_close(&e);
    }
}

/* create spec's first method on ctx: KV_OK with *st and *o, or the error */
static int make(const char *spec, const kv_method_ctx *ctx, const kv_method_ops **o, void **st, kv_err *err)
{
    kv_spec *sp;
    int n;
    *st = NULL;
    CHECK(kv_spec_parse_list(spec, &sp, &n, err) == KV_OK, "%s", err->msg);
    *o = kv_method_find(sp[0].method);
    int rc = (*o)->create(&sp[0], ctx, st, err);
    free(sp);
    return rc;
}

/* budget= under a layer scope: ns times one stream's tokens (bytes: X is
 * the total, split evenly), so never more than the stream scope. */
static void test_budget(void)
{
    const char *specs[] = { "h2o:budget=10%", "tova:budget=10%", "snapkv:budget=30%", "h2o:budget=9000",
                            "tova:budget=9000" };
    for (size_t i = 0; i < sizeof specs / sizeof *specs; i++) {
        int bytes = strchr(specs[i], '%') == NULL;
        int64_t held[2];
        for (int sc = 0; sc < 2; sc++) {
            kv_method_ctx ctx = make_ctx(sc ? KV_SCOPE_LAYER : KV_SCOPE_STREAM, NS);
            char spec[64];
            /* the stream scope's equivalent of a total in bytes is X / ns per stream */
            snprintf(spec, sizeof spec, "%s", specs[i]);
            if (bytes && !sc) snprintf(spec, sizeof spec, "%.*s%d", (int)(strchr(specs[i], '=') - specs[i] + 1),
                                       specs[i], 9000 / NS);
            kv_err err = { 0 };
            const kv_method_ops *o;
            void *st;
            CHECK(make(spec, &ctx, &o, &st, &err) == KV_OK, "%s: %s", spec, err.msg);
            held[sc] = st ? o->max_bytes(st) : -1;
            if (st) o->free(st);
        }
        /* max_bytes per stream: layer's even share equals the stream scope's */
        CHECK(held[0] == held[1], "%s: layer scope bounds %lld bytes per stream, stream scope %lld", specs[i],
              (long long)held[1], (long long)held[0]);
    }
}

static void refused(const char *spec, int scope, int kv_heads, const char *what)
{
    kv_method_ctx ctx = make_ctx(scope, kv_heads);
    kv_err err = { 0 };
    const kv_method_ops *o;
    void *st;
    int rc = make(spec, &ctx, &o, &st, &err);
    CHECK(rc == KV_EINPUT && strstr(err.msg, what) && !strchr(err.msg, '\n'), "%s: not refused with '%s' (%d: %s)",
          spec, what, rc, err.msg);
    if (st) o->free(st);
}

int main(void)
{
    static data x;
    data_gen(&x);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) test_case(&cases[i], &x);
    test_budget();
    refused("tova:tokens=100,scope=layer", KV_SCOPE_LAYER, NS, "do not combine");
    refused("snapkv:tokens=20,window=5", KV_SCOPE_LAYER, NS, "windows of 4 streams");
    refused("h2o:tokens=30,recent=10", KV_SCOPE_TRACE, 0, "recent=10 for each of 4 streams");
    return kv_test_result("test_budget_scope");
}
