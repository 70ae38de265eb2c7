/* test_global_methods.c - topk and h2o with global parameters: the rank
 * count P is a performance knob only.
 *
 * P = 1..4 ranks are simulated in one process as the replay driver runs
 * them (emu.h): chunk-cyclic shards (chunk C), one instance per rank with ctx.rank,
 * nranks and shard_tokens set, horizon(p) before a rank ingests its tokens
 * < p (in random blocks), topk's select lists merged over ranks with
 * kv_topk_merge and answered by partial_select, partial states merged in
 * rank order with kv_partial_merge, h2o's feedback given the merged (m, l).
 * Checked:
 *   topk: the merged lists are bitwise the same for every P, outputs equal
 *         P = 1's within double rounding, and a double-precision reference
 *         (ties at the k-th logit all taken) within float-logit rounding;
 *   h2o, tova, snapkv: the answers at every P equal a brute-force
 *         sequential implementation of the rules (evref.h: plain lists,
 *         sorts, scores recomputed) to rounding, holding as many tokens;
 *         the bytes summed over ranks at each decision point stay within
 *         B + every tokens (and the kept query rows); tokens >= n is exact
 *         attention at every P; recent = tokens is the global window;
 *         budget= gives the documented token count; bad specs are refused
 *         in one line; checkpoints resume bitwise. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/method.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "core/rng.h"
#include "emu.h"
#include "evref.h"
#include "testutil.h"

#define MAXP EMU_MAXP
#define MAXQ 16
#define EVERY 16 /* the deciders' default decision spacing */

typedef struct {
    int d, dv;
    int64_t n;
    float *K, *V;
    double vmax; /* max |v| */
} data;

/* keys N(0, 1) or, with nkeys > 0, drawn from nkeys fixed vectors (exact
 * logit ties); values N(0.5, 1) */
static void data_gen(data *x, int64_t n, int d, int dv, uint64_t seed, int nkeys)
{
    kv_rng r;
    kv_rng_seed(&r, seed, 3, 4);
    x->d = d;
    x->dv = dv;
    x->n = n;
    x->K = malloc(sizeof(float) * (size_t)(n * d));
    x->V = malloc(sizeof(float) * (size_t)(n * dv));
    for (int64_t i = 0; i < n * d; i++) x->K[i] = (float)kv_rng_normal(&r);
    if (nkeys > 0)
        for (int64_t i = nkeys; i < n; i++)
            memcpy(x->K + i * d, x->K + (int64_t)kv_rng_below(&r, (uint64_t)nkeys) * d, sizeof(float) * (size_t)d);
    x->vmax = 0;
    for (int64_t i = 0; i < n * dv; i++) {
        x->V[i] = (float)(0.5 + kv_rng_normal(&r));
        x->vmax = fabs(x->V[i]) > x->vmax ? fabs(x->V[i]) : x->vmax;
    }
}

static void data_free(data *x)
{
    free(x->K);
    free(x->V);
}

static kv_method_ctx make_ctx(const data *x)
{
    kv_method_ctx c;
    memset(&c, 0, sizeof c);
    c.d = x->d;
    c.dv = x->dv;
    c.scale = 1.0 / sqrt((double)x->d);
    c.n_total = x->n;
    c.nranks = 1;
    c.seed = 42;
    c.semantics = KV_SEM_FULL;
    c.q_group = 2; /* query rows per position: what budget= reserves for tova and snapkv */
    return c;
}

/* max over queries and components of |z_a - z_b| */
static double out_diff(const double *a, const double *b, int nq, int dv)
{
    size_t sl = KV_PSTATE_LEN(dv);
    double za[64], zb[64], worst = 0;
    for (int q = 0; q < nq; q++) {
        kv_partial_output(a + q * sl, dv, za);
        kv_partial_output(b + q * sl, dv, zb);
        for (int c = 0; c < dv; c++) worst = fabs(za[c] - zb[c]) > worst ? fabs(za[c] - zb[c]) : worst;
    }
    return worst;
}

static void gen_queries(float *Q, int nq, int d, kv_rng *r, double qs)
{
    for (int i = 0; i < nq * d; i++) Q[i] = (float)(qs * kv_rng_normal(r));
}

/* Query schedule: batches of nb queries at non-decreasing prefixes, some
 * shared, the first at 1 and the last at n. */
static int64_t next_pos(kv_rng *r, int64_t p, int64_t n)
{
    if (kv_rng_below(r, 4) == 0) return p; /* shares the prefix */
    p += 1 + (int64_t)kv_rng_below(r, 20);
    return p < n ? p : n;
}

/* ---- topk ---- */

/* Double-precision reference of one query: logits in double, the k-th
 * largest t, attention over every token < p with logit >= t - tie (tie:
 * logits within float rounding of t count as ties, exact ties in the data
 * are exact in both).  Returns the gap between t and the next logit below
 * the selection (-1 if none), to know when float rounding could change the
 * set. */
static double topk_ref(const data *x, const float *q, int64_t p, int64_t k, double tie, double *st)
{
    double scale = 1.0 / sqrt((double)x->d), *a = malloc(sizeof(double) * (size_t)p),
           *srt = malloc(sizeof(double) * (size_t)p);
    for (int64_t i = 0; i < p; i++) {
        double dot = 0;
        for (int c = 0; c < x->d; c++) dot += (double)q[c] * x->K[i * x->d + c];
        a[i] = srt[i] = dot * scale;
    }
    for (int64_t i = 1; i < p; i++) /* insertion sort, descending (p is small) */
        for (int64_t j = i; j > 0 && srt[j] > srt[j - 1]; j--) { double t = srt[j]; srt[j] = srt[j - 1]; srt[j - 1] = t; }
    int64_t kk = k < p ? k : p;
    double t = srt[kk - 1], gap = -1;
    for (int64_t i = kk; i < p; i++)
        if (srt[i] < t - tie) { gap = t - srt[i]; break; }
    kv_partial_clear(st, x->dv);
    for (int64_t i = 0; i < p; i++)
        if (a[i] >= t - tie) kv_partial_add_one(st, x->dv, a[i], 1.0, x->V + i * x->dv);
    free(a);
    free(srt);
    return gap;
}

static void test_topk(int nkeys)
{
    data x;
    data_gen(&x, 700, 12, 5, 91 + (uint64_t)nkeys, nkeys); /* d = 12: the dot product's tail too */
    kv_method_ctx ctx = make_ctx(&x);
    size_t sl = KV_PSTATE_LEN(x.dv);
    const int64_t ks[] = { 1, 7, 50, 5000 };
    const int64_t C = 37;
    for (int ki = 0; ki < 4; ki++) {
        char spec[64];
        snprintf(spec, sizeof spec, "topk:k=%lld", (long long)ks[ki]);
        emu e[MAXP];
        kv_err err = { 0 };
        int ok = 1;
        for (int P = 1; P <= MAXP; P++) {
            ok &= emu_open(&e[P - 1], spec, &ctx, P, C, &err) == KV_OK;
            CHECK(ok, "%s P=%d: %s", spec, P, err.msg);
        }
        if (!ok) return;
        int L = e[0].ops->select_len(e[0].inst[0]);
        CHECK(L == (ks[ki] < x.n ? ks[ki] : x.n), "%s: select_len %d", spec, L);
        kv_rng r;
        kv_rng_seed(&r, 5, (uint64_t)ki, (uint64_t)nkeys);
        float Q[MAXQ * 12];
        int64_t pos[MAXQ];
        double *gsel[MAXP], st[MAXP][MAXQ * 8], ref[MAXQ * 8];
        for (int P = 0; P < MAXP; P++) gsel[P] = malloc(sizeof(double) * (size_t)L * MAXQ);
        double worst_p = 0, tol_p = 0, worst_ref = 0, tol_ref = 0;
        int lists_same = 1, checked = 0, total = 0;
        int64_t p = 1;
        while (p < x.n) {
            int nb = 1 + (int)kv_rng_below(&r, MAXQ);
            for (int j = 0; j < nb; j++) {
                pos[j] = j ? next_pos(&r, pos[j - 1], x.n) : p;
            }
            p = next_pos(&r, pos[nb - 1], x.n);
            if (p == pos[nb - 1]) p++;
            gen_queries(Q, nb, x.d, &r, 1.5);
            for (int P = 0; P < MAXP; P++) {
                for (int j = 0; j < nb; j++)
                    if (!j || pos[j] != pos[j - 1]) emu_advance(&e[P], x.K, x.V, pos[j]);
                emu_select(&e[P], Q, pos, nb, gsel[P], st[P]);
            }
            for (int P = 1; P < MAXP; P++) {
                lists_same &= !memcmp(gsel[P], gsel[0], sizeof(double) * (size_t)L * (size_t)nb);
                double dd = out_diff(st[P], st[0], nb, x.dv);
                worst_p = dd > worst_p ? dd : worst_p;
            }
            /* P = 1 vs P: the same tokens, the same float logits; only the
             * double sums differ: each weight to a few ulps, l and u to one
             * ulp per term, so |dz| <= (4 terms + 32) eps max|v| */
            for (int j = 0; j < nb; j++) {
                double tp = (4.0 * (double)pos[j] + 32) * DBL_EPSILON * x.vmax;
                tol_p = tp > tol_p ? tp : tol_p;
            }
            CHECK(worst_p <= tol_p, "%s: P differ from P=1 by %.3g > %.3g", spec, worst_p, tol_p);
            for (int j = 0; j < nb; j++) {
                /* float logit error: d products and sums of |q_c k_c| to
                 * (d + 2) eps_f each, times scale */
                double bound = 0;
                for (int64_t i = 0; i < pos[j]; i++) {
                    double s = 0;
                    for (int c = 0; c < x.d; c++) s += fabs((double)Q[j * x.d + c] * x.K[i * x.d + c]);
                    s *= (x.d + 2) * (double)FLT_EPSILON / sqrt((double)x.d);
                    bound = s > bound ? s : bound;
                }
                double gap = topk_ref(&x, Q + j * x.d, pos[j], ks[ki], 2 * bound, ref + j * sl);
                total++;
                if (gap >= 0 && gap <= 4 * bound) continue; /* rounding could change the set */
                double z[8], zr[8];
                kv_partial_output(st[0] + j * sl, x.dv, z);
                kv_partial_output(ref + j * sl, x.dv, zr);
                /* weights off by exp(+-2 bound): |dz| <= 2 (e^{2 bound} - 1) max|v| */
                double tr = 2 * expm1(2 * bound) * x.vmax + 1e-12;
                for (int c = 0; c < x.dv; c++) {
                    worst_ref = fabs(z[c] - zr[c]) > worst_ref ? fabs(z[c] - zr[c]) : worst_ref;
                    if (fabs(z[c] - zr[c]) > tr) tol_ref = fabs(z[c] - zr[c]) / tr;
                }
                checked++;
            }
        }
        CHECK(lists_same, "%s: merged top-k lists differ across P", spec);
        CHECK(tol_ref == 0, "%s: off the double reference by %.3g (%.3g x its bound)", spec, worst_ref, tol_ref);
        CHECK(checked >= 50 && 4 * checked >= 3 * total, "%s: only %d of %d queries compared with the reference", spec,
              checked, total);
        printf("  %s keys %s: P vs P=1 %.3g (bound %.3g), vs reference %.3g over %d queries\n", spec,
               nkeys ? "tied" : "distinct", worst_p, tol_p, worst_ref, checked);
        /* the driver's one-prefix partial at P = 1 is select + partial_select */
        {
            double a[8], b[8], *g = malloc(sizeof(double) * (size_t)L);
            int64_t pp = x.n;
            CHECK(e[0].ops->partial(e[0].inst[0], Q, 1, pp, a) == KV_OK, "partial");
            CHECK(e[0].ops->select(e[0].inst[0], Q, &pp, 1, g) == KV_OK &&
                      e[0].ops->partial_select(e[0].inst[0], Q, &pp, 1, g, b) == KV_OK, "select");
            CHECK(!memcmp(a, b, sizeof(double) * sl), "%s: partial != select + partial_select", spec);
            free(g);
        }
        /* capacity: every rank holds its whole shard once */
        for (int P = 0; P < MAXP; P++) {
            emu_advance(&e[P], x.K, x.V, x.n);
            /* rows as exact's, plus each rank's run table (16 bytes a run, one
             * run per owned chunk, capacity doubling from 16) */
            size_t want = (size_t)x.n * (size_t)(x.d + x.dv) * sizeof(float), runs = 2 * ((size_t)(x.n / C) / (size_t)(P + 1) + 2);
            size_t most = want + (size_t)(P + 1) * 16 * (runs > 16 ? runs : 16);
            CHECK(emu_bytes(&e[P]) >= want && emu_bytes(&e[P]) <= most, "%s P=%d: %zu bytes, want %zu..%zu", spec, P + 1,
                  emu_bytes(&e[P]), want, most);
            CHECK(emu_kept(&e[P]) == x.n, "%s P=%d: keeps %lld", spec, P + 1, (long long)emu_kept(&e[P]));
            free(gsel[P]);
            emu_close(&e[P]);
        }
    }
    data_free(&x);
}

/* ---- h2o ---- */

static int64_t h2o_slot_bytes(const data *x)
{
    return (int64_t)(x->d + x->dv) * 4 + 8 + 8 + 12;
}

/* tokens >= n: every rank keeps every token at every prefix, whatever P,
 * recent and the chunk (the early chunks' ranks hold most non-recent
 * tokens, so a split by tokens seen would evict there) */
static void test_h2o_covering(void)
{
    data x;
    data_gen(&x, 700, 12, 4, 73, 0);
    kv_method_ctx ctx = make_ctx(&x);
    const char *specs[] = { "h2o:tokens=700", "h2o:tokens=700,recent=0", "h2o:tokens=700,recent=700",
                            "h2o:tokens=900,recent=100" };
    const int64_t chunks[] = { 37, 350 };
    for (int si = 0; si < 4; si++)
        for (int ci = 0; ci < 2; ci++)
            for (int P = 1; P <= MAXP; P++) {
                emu e;
                kv_err err = { 0 };
                CHECK(emu_open(&e, specs[si], &ctx, P, chunks[ci], &err) == KV_OK, "%s", err.msg);
                if (!e.ops) return;
                kv_rng r;
                kv_rng_seed(&r, 17, (uint64_t)P, (uint64_t)si);
                float Q[4 * 12];
                double st[4 * 7];
                int64_t bad = 0;
                for (int64_t p = 1; p <= x.n; p += 1 + (int64_t)kv_rng_below(&r, 40)) {
                    int nq = 1 + (int)kv_rng_below(&r, 4);
                    gen_queries(Q, nq, x.d, &r, 2.0);
                    emu_advance(&e, x.K, x.V, p);
                    emu_partial(&e, Q, nq, p, st);
                    bad += emu_kept(&e) != p;
                }
                CHECK(bad == 0, "%s P=%d C=%lld: held fewer than every token at %lld prefixes", specs[si], P,
                      (long long)chunks[ci], (long long)bad);
                emu_close(&e);
            }
    data_free(&x);
}

/* exact attention over [a, b) in double */
static void window_ref(const data *x, const float *q, int64_t a, int64_t b, double *st)
{
    kv_partial_clear(st, x->dv);
    float scale = (float)(1.0 / sqrt((double)x->d));
    for (int64_t i = a < 0 ? 0 : a; i < b; i++)
        kv_partial_add_one(st, x->dv, (double)(kv_dot_fixed(q, x->K + i * x->d, x->d) * scale), 1.0, x->V + i * x->dv);
}

/* recent = tokens: the global window of the last R tokens for every P */
static void test_h2o_window(void)
{
    data x;
    data_gen(&x, 800, 12, 4, 17, 0);
    kv_method_ctx ctx = make_ctx(&x);
    const int64_t R = 45;
    for (int P = 1; P <= MAXP; P++) {
        emu e;
        kv_err err = { 0 };
        CHECK(emu_open(&e, "h2o:tokens=45,recent=45", &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
        if (!e.ops) return;
        kv_rng r;
        kv_rng_seed(&r, 3, (uint64_t)P, 0);
        float Q[12];
        double st[7], rs[7], worst = 0, tol = (4.0 * (double)R + 32) * DBL_EPSILON * x.vmax;
        for (int64_t p = 1; p <= x.n; p += 1 + (int64_t)kv_rng_below(&r, 30)) {
            gen_queries(Q, 1, x.d, &r, 2.0);
            emu_advance(&e, x.K, x.V, p);
            emu_partial(&e, Q, 1, p, st);
            window_ref(&x, Q, p - R, p, rs);
            double dd = out_diff(st, rs, 1, x.dv);
            worst = dd > worst ? dd : worst;
            CHECK(emu_kept(&e) == (p < R ? p : R), "P=%d p=%lld: holds %lld", P, (long long)p, (long long)emu_kept(&e));
        }
        emu_end_epoch(&e);
        CHECK(worst <= tol, "recent = tokens P=%d: differs from the window by %.3g > %.3g", P, worst, tol);
        CHECK(e.worst <= (size_t)((R + EVERY) * h2o_slot_bytes(&x)), "window P=%d: %zu bytes", P, e.worst);
        emu_close(&e);
    }
    data_free(&x);
}

/* Two instances (a budget= and a tokens= spec) on the same queries, 2 at a
 * time at random prefixes up to n: 1 if every answer is bitwise the same.
 * a's last epoch is closed, for a.worst. */
static int same_run(emu *a, emu *b, const data *x, int P)
{
    kv_rng r;
    kv_rng_seed(&r, 9, (uint64_t)P, 0);
    float Q[2 * 12];
    double sa[2 * 7], sb[2 * 7];
    int same = 1;
    CHECK(x->d <= 12 && x->dv <= 4, "same_run: d=%d dv=%d over its buffers", x->d, x->dv);
    if (x->d > 12 || x->dv > 4) return 0;
    for (int64_t p = 3; p <= x->n; p += 1 + (int64_t)kv_rng_below(&r, 20)) {
        gen_queries(Q, 2, x->d, &r, 2.0);
        emu_advance(a, x->K, x->V, p);
        emu_advance(b, x->K, x->V, p);
        emu_partial(a, Q, 2, p, sa);
        emu_partial(b, Q, 2, p, sb);
        same &= !memcmp(sa, sb, sizeof sa);
    }
    emu_end_epoch(a);
    return same;
}

/* budget= in bytes: tokens = floor(bytes / bytes per token), the same
 * instance as tokens=; both, or recent beyond, refused */
static void test_h2o_budget(void)
{
    data x;
    data_gen(&x, 600, 12, 4, 23, 0);
    kv_method_ctx ctx = make_ctx(&x);
    int64_t per = h2o_slot_bytes(&x), bytes = (50 + EVERY) * per + per - 1, tok = 50;
    char bs[64], ts[64];
    snprintf(bs, sizeof bs, "h2o:budget=%lld,recent=10", (long long)bytes);
    snprintf(ts, sizeof ts, "h2o:tokens=%lld,recent=10", (long long)tok);
    for (int P = 1; P <= 3; P += 2) {
        emu a, b;
        kv_err err = { 0 };
        CHECK(emu_open(&a, bs, &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
        CHECK(emu_open(&b, ts, &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
        if (!a.ops || !b.ops) return;
        CHECK(same_run(&a, &b, &x, P), "%s and %s differ at P=%d", bs, ts, P);
        CHECK(a.worst <= (size_t)bytes, "%s P=%d: peak %zu bytes", bs, P, a.worst);
        CHECK(emu_kept(&a) == tok, "%s P=%d: holds %lld", bs, P, (long long)emu_kept(&a));
        emu_close(&a);
        emu_close(&b);
    }
    /* refused in one line: both knobs, recent over the budget, no token */
    const char *bad[] = { "h2o:tokens=10,budget=1MiB", "h2o:budget=100tok,recent=1000000", "h2o:budget=10" };
    const char *why[] = { "not both", "exceeds", "holds no token" };
    for (int i = 0; i < 3; i++) {
        emu e;
        kv_err err = { 0 };
        int rc = emu_open(&e, bad[i], &ctx, 2, 37, &err);
        CHECK(rc == KV_EINPUT && strstr(err.msg, why[i]) && !strchr(err.msg, '\n'), "%s: rc %d '%s'", bad[i], rc,
              err.msg);
        if (rc == KV_OK) emu_close(&e);
    }
    data_free(&x);
}

/* ---- tova and snapkv ---- */

/* tova: row, index, score, heap place and entry, 16 bytes of heap-key scratch */
static int64_t tova_slot(const data *x) { return (int64_t)(x->d + x->dv) * 4 + 8 + 8 + 8 + 16; }
static int64_t tova_qbytes(const data *x) { return (int64_t)x->d * 4 + 16; }
/* (d + dv) floats, the index, the vote and pooled score, the entry in its order by index */
static int64_t snap_slot(const data *x) { return (int64_t)(x->d + x->dv) * 4 + 8 + 16 + 4; }
static int64_t snap_qbytes(const data *x) { return (int64_t)x->d * 4 + 8 + 16; }

typedef struct {
    const char *spec;
    evref_kind kind;
    int64_t B, R, W, T, kern;
    int maxpool;
} evcase;

static const evcase cases[] = {
    { "h2o:tokens=60,recent=0", EVREF_H2O, 60, 0, 0, 0, 0, 0 },
    { "h2o:tokens=60,recent=7", EVREF_H2O, 60, 7, 0, 0, 0, 0 },
    { "h2o:tokens=60,recent=30", EVREF_H2O, 60, 30, 0, 0, 0, 0 },
    { "h2o:tokens=60,recent=60", EVREF_H2O, 60, 60, 0, 0, 0, 0 },
    { "h2o:tokens=1500,recent=200", EVREF_H2O, 1500, 200, 0, 0, 0, 0 },
    { "tova:tokens=1", EVREF_TOVA, 1, 0, 0, 0, 0, 0 },
    { "tova:tokens=60", EVREF_TOVA, 60, 0, 0, 0, 0, 0 },
    { "tova:tokens=200", EVREF_TOVA, 200, 0, 0, 0, 0, 0 },
    { "tova:tokens=1500", EVREF_TOVA, 1500, 0, 0, 0, 0, 0 },
    { "snapkv:tokens=8,window=5,period=17,kernel=5", EVREF_SNAPKV, 8, 0, 5, 3, 5, 0 },
    { "snapkv:tokens=60,window=5,period=17,kernel=5", EVREF_SNAPKV, 60, 0, 5, 17, 5, 0 },
    { "snapkv:tokens=200,window=5,period=17,kernel=3,pool=max", EVREF_SNAPKV, 200, 0, 5, 17, 3, 1 },
    { "snapkv:tokens=1500,window=5,period=17,kernel=5", EVREF_SNAPKV, 1500, 0, 5, 17, 5, 0 },
};

/* Every P against the brute force (and exact attention when B >= n), the
 * held count equal to its, the bytes summed over ranks within B + every
 * tokens and every rank's kept query rows (up to 4 per position here). */
static void test_evict_vs_ref(const evcase *c)
{
    data x;
    data_gen(&x, 1500, 12, 4, 71 + (uint64_t)c->kind, 0);
    kv_method_ctx ctx = make_ctx(&x);
    for (int P = 1; P <= MAXP; P++) {
        emu e;
        kv_err err = { 0 };
        CHECK(emu_open(&e, c->spec, &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
        if (!e.ops) return;
        evref h;
        evref_init(&h, c->kind, x.d, x.dv, x.K, x.V, x.n);
        h.B = c->B, h.R = c->R, h.W = c->W, h.T = c->T, h.kern = c->kern, h.maxpool = c->maxpool;
        kv_rng r;
        kv_rng_seed(&r, 13, (uint64_t)P, (uint64_t)c->B);
        float Q[4 * 12];
        double st[4 * 7], rs[4 * 7], worst = 0, worst_exact = 0;
        double tol = (4.0 * (double)(c->B < x.n ? c->B : x.n) + 32) * DBL_EPSILON * x.vmax;
        int64_t badn = 0;
        for (int64_t p = 1; p <= x.n; p += 1 + (int64_t)kv_rng_below(&r, 12)) {
            int nq = 1 + (int)kv_rng_below(&r, 4);
            gen_queries(Q, nq, x.d, &r, 2.0);
            emu_advance(&e, x.K, x.V, p);
            emu_partial(&e, Q, nq, p, st);
            evref_query(&h, Q, nq, p, rs);
            double dd = out_diff(st, rs, nq, x.dv);
            worst = dd > worst ? dd : worst;
            badn += emu_kept(&e) != h.n;
            if (c->B >= x.n) { /* nothing evicted: exact attention */
                for (int q = 0; q < nq; q++) window_ref(&x, Q + q * x.d, 0, p, rs + q * 7);
                dd = out_diff(st, rs, nq, x.dv);
                worst_exact = dd > worst_exact ? dd : worst_exact;
            }
        }
        emu_end_epoch(&e);
        int64_t held = c->B + EVERY < x.n ? c->B + EVERY : x.n;
        size_t budget = (size_t)(c->kind == EVREF_H2O ? held * h2o_slot_bytes(&x)
                                 : c->kind == EVREF_TOVA ? held * tova_slot(&x) + 4 * tova_qbytes(&x)
                                                         : held * snap_slot(&x) + c->W * 4 * snap_qbytes(&x));
        CHECK(worst <= tol, "%s P=%d: differs from the brute force by %.3g > %.3g", c->spec, P, worst, tol);
        CHECK(badn == 0, "%s P=%d: holds another count than the brute force at %lld positions", c->spec, P,
              (long long)badn);
        CHECK(worst_exact <= tol, "%s P=%d: tokens >= n differs from exact by %.3g > %.3g", c->spec, P, worst_exact,
              tol);
        CHECK(e.worst <= budget, "%s P=%d: %zu bytes summed over ranks > %zu", c->spec, P, e.worst, budget);
        printf("  %s P=%d: peak %zu bytes (bound %zu), vs brute force %.3g\n", c->spec, P, e.worst, budget, worst);
        evref_free(&h);
        emu_close(&e);
    }
    data_free(&x);
}

/* The tokens snapkv holds over all ranks, ascending (n of them, into
 * out), read from each rank's checkpoint form (snapkv/snapkv.c: snapkv_save, four
 * counters, the buffered rows, then slots.h: kv_slots_save's K, V, idx). */
static int64_t snap_kept(const emu *e, int64_t *out)
{
    int64_t n = 0;
    for (int k = 0; k < e->P; k++) {
        kv_buf buf;
        kv_buf_init(&buf);
        e->ops->save(e->inst[k], &buf);
        kv_rd rd = { .data = buf.data, .len = buf.len, .pos = 0, .what = "snapkv" };
        kv_err err = { 0 };
        int64_t c;
        void *arr = NULL;
        size_t cnt = 0;
        for (int i = 0; i < 4; i++) kv_rd_i64(&rd, &c, &err);
        for (int i = 0; i < 5 && !err.code; i++, arr = NULL) {
            kv_rd_arr(&rd, &arr, 1, SIZE_MAX, &cnt, &err);
            free(arr);
        }
        CHECK(!err.code && !kv_rd_arr(&rd, &arr, sizeof(int64_t), SIZE_MAX, &cnt, &err), "snapkv save: %s", err.msg);
        if (cnt) memcpy(out + n, arr, sizeof(int64_t) * cnt);
        n += (int64_t)cnt;
        free(arr);
        kv_buf_free(&buf);
    }
    for (int64_t i = 1; i < n; i++) /* the ranks' chunks interleave: insertion sort */
        for (int64_t j = i; j > 0 && out[j] < out[j - 1]; j--) {
            int64_t t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    return n;
}

/* The summed halo of the P states st at x (hl doubles) and each state's
 * candidate keys (L lowest) into keys + r L. */
static void snap_cands(const emu *e, void **st, int64_t x, int L, double *halo, size_t hl, kv_evkey *keys)
{
    const kv_method_ops *o = e->ops;
    double *part = calloc(hl + 1, sizeof(double));
    for (size_t i = 0; i < hl; i++) halo[i] = 0;
    for (int r = 0; r < e->P && hl; r++) {
        for (size_t i = 0; i < hl; i++) part[i] = 0;
        o->decide_halo(st[r], x, part);
        for (size_t i = 0; i < hl; i++) halo[i] += part[i];
    }
    for (int r = 0; r < e->P; r++)
        CHECK(o->decide_cands(&st[r], 1, x, hl ? halo : NULL, L, keys + (size_t)r * L) == KV_OK, "decide_cands");
    free(part);
}

/* 1 if every rank's candidate keys at x (every candidate's pooled score)
 * and the halo are bitwise those of the same state restored from its
 * checkpoint, which keeps no votes or pooled scores and so computes them
 * all afresh. */
static int snap_same_as_fresh(emu *e, const kv_method_ctx *ctx, int64_t x)
{
    const kv_method_ops *o = e->ops;
    int L = 4096, same = 1;
    size_t hl = o->decide_halo_len(e->inst[0], x);
    void *fresh[EMU_MAXP] = { NULL };
    kv_evkey *ka = malloc(sizeof(kv_evkey) * (size_t)(L * e->P)), *kb = malloc(sizeof(kv_evkey) * (size_t)(L * e->P));
    double *ha = calloc(hl + 1, sizeof(double)), *hb = calloc(hl + 1, sizeof(double));
    for (int r = 0; r < e->P; r++) {
        kv_buf buf;
        kv_err err = { 0 };
        kv_buf_init(&buf);
        o->save(e->inst[r], &buf);
        kv_method_ctx c = emu_rank_ctx(ctx, e->P, e->C, r);
        kv_spec_reset(&e->spec[0]);
        CHECK(o->create(&e->spec[0], &c, &fresh[r], &err) == KV_OK, "%s", err.msg);
        kv_rd rd = { .data = buf.data, .len = buf.len, .pos = 0, .what = "snapkv" };
        CHECK(o->load(fresh[r], &rd, &err) == KV_OK, "load: %s", err.msg);
        kv_buf_free(&buf);
    }
    snap_cands(e, e->inst, x, L, ha, hl, ka);
    snap_cands(e, fresh, x, L, hb, hl, kb);
    same = !memcmp(ka, kb, sizeof(kv_evkey) * (size_t)(L * e->P)) && !memcmp(ha, hb, sizeof(double) * hl);
    for (int r = 0; r < e->P; r++) o->free(fresh[r]);
    free(ka);
    free(kb);
    free(ha);
    free(hb);
    return same;
}

/* snapkv keeps its pooled scores and votes between decisions and redoes
 * only what changed (snapkv/snapkv_decide.c: offer, compute_votes): the tokens it holds,
 * over all ranks, are after every query exactly the brute force's, which
 * recomputes every vote and pooled score and sorts every candidate
 * (evref.c), through dense stretches of queries (every buffered row sees
 * every candidate: votes summed afresh) and sparse ones (tokens newer than
 * the rows that left: votes added to), at P = 1 and 3 (chunks of 6: many
 * pooling windows reach another rank's tokens); and at a third of the
 * query points every candidate's key and the halo are bitwise those of the
 * state restored from its checkpoint (which recomputes them all). */
static void test_snapkv_kept(const char *spec, int64_t B, int64_t W, int64_t T, int64_t kern, int maxpool, int64_t E,
                             int64_t gap)
{
    data x;
    data_gen(&x, 2500, 12, 4, 91, 0);
    kv_method_ctx ctx = make_ctx(&x);
    int64_t *kept = malloc(sizeof(int64_t) * (size_t)x.n);
    for (int P = 1; P <= 3; P += 2) {
        emu e;
        kv_err err = { 0 };
        CHECK(emu_open(&e, spec, &ctx, P, 6, &err) == KV_OK, "%s", err.msg);
        if (!e.ops) break;
        evref h;
        evref_init(&h, EVREF_SNAPKV, x.d, x.dv, x.K, x.V, x.n);
        h.B = B, h.W = W, h.T = T, h.kern = kern, h.maxpool = maxpool, h.E = E;
        kv_rng r;
        kv_rng_seed(&r, 17, (uint64_t)P, (uint64_t)B);
        float Q[4 * 12];
        double st[4 * 7], rs[4 * 7];
        int64_t bad = 0, queries = 0, first = -1, fresh_bad = 0;
        for (int64_t p = 1; p <= x.n; queries++) {
            int nq = 1 + (int)kv_rng_below(&r, 4);
            gen_queries(Q, nq, x.d, &r, 2.0);
            emu_advance(&e, x.K, x.V, p);
            if (kv_rng_below(&r, 3) == 0) fresh_bad += !snap_same_as_fresh(&e, &ctx, p);
            emu_partial(&e, Q, nq, p, st);
            evref_query(&h, Q, nq, p, rs);
            int64_t n = snap_kept(&e, kept);
            int same = n == h.n && !memcmp(kept, h.idx, sizeof(int64_t) * (size_t)n);
            if (!same && first < 0) first = p;
            bad += !same;
            /* stretches of 200 positions: dense (every position), then sparse (gaps up to `gap`) */
            p += (p / 200) % 2 ? 1 + (int64_t)kv_rng_below(&r, (uint64_t)gap) : 1;
        }
        CHECK(bad == 0, "%s P=%d: holds other tokens than the brute force after %lld of %lld queries (first at %lld)",
              spec, P, (long long)bad, (long long)queries, (long long)first);
        CHECK(fresh_bad == 0, "%s P=%d: candidate keys differ from a recomputation from scratch at %lld points", spec,
              P, (long long)fresh_bad);
        printf("  %s P=%d: the same tokens as the brute force after each of %lld queries\n", spec, P,
               (long long)queries);
        evref_free(&h);
        emu_close(&e);
    }
    free(kept);
    data_free(&x);
}

/* budget= in bytes gives B = (bytes - query rows) / slot - every: the same
 * instance as tokens=B; both knobs, or no token, refused in one line */
static void test_eviction_budget(int snap)
{
    data x;
    data_gen(&x, 600, 12, 4, 23, 0);
    kv_method_ctx ctx = make_ctx(&x);
    const char *m = snap ? "snapkv" : "tova";
    for (int P = 1; P <= 3; P += 2) {
        /* the rows kept: 2 per position (ctx q_group); snapkv's of its default window of 32 positions */
        int64_t per = snap ? snap_slot(&x) : tova_slot(&x), q = snap ? 32 * 2 * snap_qbytes(&x) : 2 * tova_qbytes(&x);
        int64_t tok = 50, bytes = (tok + EVERY) * per + q + per - 1;
        char bs[64], ts[64];
        snprintf(bs, sizeof bs, "%s:budget=%lld", m, (long long)bytes);
        snprintf(ts, sizeof ts, "%s:tokens=%lld", m, (long long)tok);
        emu a, b;
        kv_err err = { 0 };
        CHECK(emu_open(&a, bs, &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
        CHECK(emu_open(&b, ts, &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
        if (!a.ops || !b.ops) return;
        CHECK(same_run(&a, &b, &x, P), "%s and %s differ at P=%d", bs, ts, P);
        CHECK(a.worst <= (size_t)bytes, "%s P=%d: peak %zu bytes", bs, P, a.worst);
        emu_close(&a);
        emu_close(&b);
    }
    char bad[3][64];
    snprintf(bad[0], 64, "%s:tokens=10,budget=1MiB", m);
    snprintf(bad[1], 64, "%s:budget=10", m);
    snprintf(bad[2], 64, "%s:budget=1tok", m);
    const char *why[] = { "not both", snap ? "not more than the window" : "holds no token",
                          snap ? "not more than the window" : "holds no token" };
    for (int i = 0; i < 3; i++) {
        emu e;
        kv_err err = { 0 };
        int rc = emu_open(&e, bad[i], &ctx, 2, 37, &err);
        CHECK(rc == KV_EINPUT && strstr(err.msg, why[i]) && !strchr(err.msg, '\n'), "%s: rc %d '%s'", bad[i], rc,
              err.msg);
        if (rc == KV_OK) emu_close(&e);
    }
    data_free(&x);
}

/* save at a prefix on every rank, load into fresh instances, go on: the
 * answers and bytes are those of the uninterrupted run, bitwise */
static void test_resume(const char *spec, int P)
{
    data x;
    data_gen(&x, 500, 12, 4, 29, 0);
    kv_method_ctx ctx = make_ctx(&x);
    emu a, b;
    kv_err err = { 0 };
    CHECK(emu_open(&a, spec, &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
    CHECK(emu_open(&b, spec, &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
    if (!a.ops || !b.ops) return;
    kv_rng r;
    kv_rng_seed(&r, 2, (uint64_t)P, 0);
    float Q[3 * 12];
    double sa[3 * 7], sb[3 * 7], ga[3 * 600], gb[3 * 600];
    int same = 1, resumed = 0;
    for (int64_t p = 2; p <= x.n; p += 1 + (int64_t)kv_rng_below(&r, 25)) {
        int64_t pos[3] = { p, p, p };
        gen_queries(Q, 3, x.d, &r, 2.0);
        emu_advance(&a, x.K, x.V, p);
        emu_advance(&b, x.K, x.V, p);
        if (a.ops->select) {
            emu_select(&a, Q, pos, 3, ga, sa);
            emu_select(&b, Q, pos, 3, gb, sb);
        } else {
            emu_partial(&a, Q, 3, p, sa);
            emu_partial(&b, Q, 3, p, sb);
        }
        same &= !memcmp(sa, sb, sizeof sa) && emu_bytes(&a) == emu_bytes(&b);
        if (!resumed && p > x.n / 2) {
            for (int k = 0; k < P; k++) {
                kv_buf buf;
                kv_buf_init(&buf);
                b.ops->save(b.inst[k], &buf);
                kv_method_ctx c = emu_rank_ctx(&ctx, P, 37, k); /* as emu_open (and the driver) make it */
                void *fresh = NULL;
                kv_spec_reset(&b.spec[0]);
                CHECK(b.ops->create(&b.spec[0], &c, &fresh, &err) == KV_OK, "%s", err.msg);
                kv_rd rd = { .data = buf.data, .len = buf.len, .pos = 0, .what = spec };
                CHECK(b.ops->load(fresh, &rd, &err) == KV_OK && rd.pos == rd.len, "%s load: %s", spec, err.msg);
                b.ops->free(b.inst[k]);
                b.inst[k] = fresh;
                kv_buf_free(&buf);
            }
            resumed = 1;
        }
    }
    CHECK(same, "%s P=%d: resumed run differs", spec, P);
    emu_close(&a);
    emu_close(&b);
    data_free(&x);
}

int main(void)
{
    test_topk(0);
    test_topk(6);
    test_h2o_covering();
    test_h2o_window();
    test_h2o_budget();
    test_resume("topk:k=9", 3);
    test_resume("h2o:tokens=50,recent=12", 3);
    test_resume("h2o:tokens=40,recent=0", 2);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) test_evict_vs_ref(&cases[i]);
    test_snapkv_kept("snapkv:tokens=300,window=6,period=17,kernel=5", 300, 6, 17, 5, 0, EVERY, 60);
    test_snapkv_kept("snapkv:tokens=120,window=4,period=9,kernel=3,pool=max,every=5", 120, 4, 9, 3, 1, 5, 60);
    test_snapkv_kept("snapkv:tokens=200,window=3,period=5,kernel=5", 200, 3, 5, 5, 0, EVERY, 300);
    test_eviction_budget(0);
    test_eviction_budget(1);
    test_resume("tova:tokens=50", 3);
    test_resume("tova:tokens=500", 2);
    test_resume("snapkv:tokens=60,window=4,period=10,kernel=3", 3);
    test_resume("snapkv:tokens=45", 1);
    return kv_test_result("test_global_methods");
}
