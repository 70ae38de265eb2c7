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
 *   h2o:  P = 1 equals brute-force H2O with the global budget; for every P
 *         the bytes summed over ranks (each rank's peak within an epoch,
 *         epochs starting at each horizon) stay within the budget, the
 *         shares fill it, recent = tokens is the global window; budget= in
 *         bytes gives the token count it documents; checkpoints resume
 *         bitwise;
 *   tova, snapkv: P = 1 equals a brute-force implementation of the rule
 *         (plain lists, linear scans, qsort); for every P the bytes summed
 *         over ranks stay within the budget and the shares fill it;
 *         tokens >= n is exact attention at every P; budget= gives the
 *         documented token count; checkpoints resume bitwise. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/method.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "core/rng.h"
#include "emu.h"
#include "testutil.h"

#define MAXP EMU_MAXP
#define MAXQ 16

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

/* H2O by brute force with one global budget: held tokens in a plain list
 * (ascending index), eviction by a linear scan, scores from the softmax
 * over everything held; logits by kv_dot_fixed, the function h2o.c uses
 * (so the same rounding). */
typedef struct {
    int64_t B, R, n;
    int64_t *idx;
    double *score;
} h2o_ref;

static void h2o_ref_ingest(h2o_ref *h, int64_t g)
{
    h->idx[h->n] = g;
    h->score[h->n++] = 0;
    if (h->n <= h->B) return;
    int64_t worst = -1; /* lowest (score, index) among all but the newest R */
    for (int64_t i = 0; i < h->n - h->R; i++)
        if (worst < 0 || h->score[i] < h->score[worst]) worst = i; /* ties: the older */
    memmove(h->idx + worst, h->idx + worst + 1, sizeof(int64_t) * (size_t)(h->n - worst - 1));
    memmove(h->score + worst, h->score + worst + 1, sizeof(double) * (size_t)(h->n - worst - 1));
    h->n--;
}

static void h2o_ref_partial(h2o_ref *h, const data *x, const float *Q, int nq, double *st)
{
    size_t sl = KV_PSTATE_LEN(x->dv);
    float scale = (float)(1.0 / sqrt((double)x->d));
    double *inc = calloc((size_t)h->n + 1, sizeof(double)), *a = malloc(sizeof(double) * ((size_t)h->n + 1));
    for (int q = 0; q < nq; q++) {
        double *o = st + q * sl, m = -INFINITY, l = 0;
        kv_partial_clear(o, x->dv);
        for (int64_t i = 0; i < h->n; i++) {
            a[i] = (double)(kv_dot_fixed(Q + q * x->d, x->K + h->idx[i] * x->d, x->d) * scale);
            m = a[i] > m ? a[i] : m;
        }
        for (int64_t i = 0; i < h->n; i++) {
            kv_partial_add_one(o, x->dv, a[i], 1.0, x->V + h->idx[i] * x->dv);
            l += exp(a[i] - m);
        }
        for (int64_t i = 0; i < h->n; i++) inc[i] += exp(a[i] - m) / l;
    }
    for (int64_t i = 0; i < h->n; i++) h->score[i] += inc[i];
    free(inc);
    free(a);
}

static int64_t h2o_slot_bytes(const data *x)
{
    return (int64_t)(x->d + x->dv) * 4 + 8 + 8 + 12;
}

/* P = 1 == brute force; for every P the memory summed over ranks within
 * the budget, the shares filling it */
static void test_h2o_global(void)
{
    data x;
    data_gen(&x, 1500, 12, 4, 71, 0);
    kv_method_ctx ctx = make_ctx(&x);
    size_t sl = KV_PSTATE_LEN(x.dv);
    const int64_t B = 60, rec[] = { 0, 7, 30, 60 };
    for (int ri = 0; ri < 4; ri++)
        for (int P = 1; P <= MAXP; P++) {
            char spec[64];
            snprintf(spec, sizeof spec, "h2o:tokens=%lld,recent=%lld", (long long)B, (long long)rec[ri]);
            emu e;
            kv_err err = { 0 };
            CHECK(emu_open(&e, spec, &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
            if (!e.ops) return;
            h2o_ref h = { B, rec[ri], 0, malloc(sizeof(int64_t) * (size_t)(B + 1)), malloc(sizeof(double) * (size_t)(B + 1)) };
            kv_rng r;
            kv_rng_seed(&r, 13, (uint64_t)P, (uint64_t)ri);
            float Q[4 * 12];
            double st[4 * 7], rs[4 * 7], worst = 0, tol = (4.0 * (double)B + 32) * DBL_EPSILON * x.vmax;
            int64_t fed = 0, short_of = 0, least = B;
            for (int64_t p = 1; p <= x.n; p += 1 + (int64_t)kv_rng_below(&r, 12)) {
                int nq = 1 + (int)kv_rng_below(&r, 4);
                gen_queries(Q, nq, x.d, &r, 2.0);
                emu_advance(&e, x.K, x.V, p);
                emu_partial(&e, Q, nq, p, st);
                if (P == 1) {
                    for (; fed < p; fed++) h2o_ref_ingest(&h, fed);
                    h2o_ref_partial(&h, &x, Q, nq, rs);
                    double dd = out_diff(st, rs, nq, x.dv);
                    worst = dd > worst ? dd : worst;
                    CHECK(emu_kept(&e) == h.n, "%s p=%lld: holds %lld, brute force %lld", spec, (long long)p,
                          (long long)emu_kept(&e), (long long)h.n);
                }
                /* the recent part is full and the shares sum to >= H - (P - 1)
                 * (one floor each); a rank whose share grew at a horizon
                 * may lack the tokens to fill it (it dropped them while its
                 * share lagged one epoch): up to H * gap / p' each, gap < 12 */
                int64_t lag = P > 1 && p > 12 ? P * ((B - rec[ri]) * 12 / (p - 12) + 1) : 0;
                if (p >= 4 * B && emu_kept(&e) < B - (P - 1) - lag) short_of++;
                if (p >= 4 * B && emu_kept(&e) < least) least = emu_kept(&e);
            }
            emu_end_epoch(&e);
            if (P == 1) CHECK(worst <= tol, "%s: differs from brute-force H2O by %.3g > %.3g", spec, worst, tol);
            CHECK(e.worst <= (size_t)(B * h2o_slot_bytes(&x)), "%s P=%d: %zu bytes summed over ranks > budget %lld",
                  spec, P, e.worst, (long long)(B * h2o_slot_bytes(&x)));
            CHECK(short_of == 0, "%s P=%d: held fewer than B - (P - 1) tokens at %lld prefixes", spec, P,
                  (long long)short_of);
            printf("  %s P=%d: peak %zu bytes (budget %lld), holds >= %lld of %lld tokens\n", spec, P, e.worst,
                   (long long)(B * h2o_slot_bytes(&x)), (long long)least, (long long)B);
            free(h.idx);
            free(h.score);
            emu_close(&e);
        }
    (void)sl;
    data_free(&x);
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
        CHECK(e.worst <= (size_t)(R * h2o_slot_bytes(&x)), "window P=%d: %zu bytes", P, e.worst);
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
    int64_t per = h2o_slot_bytes(&x), bytes = 50 * per + per - 1, tok = 50;
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
        CHECK(emu_kept(&a) >= tok - (P - 1), "%s P=%d: holds %lld", bs, P, (long long)emu_kept(&a));
        emu_close(&a);
        emu_close(&b);
    }
    /* refused in one line: both knobs, recent over the budget, no token */
    const char *bad[] = { "h2o:tokens=10,budget=1MiB", "h2o:budget=10tok,recent=1000000", "h2o:budget=10" };
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

static double ref_logit(const data *x, const float *q, int64_t i)
{
    return (double)(kv_dot_fixed(q, x->K + i * x->d, x->d) * (float)(1.0 / sqrt((double)x->d)));
}

/* answers over a held list of token indices (index order) */
static void list_partial(const data *x, const int64_t *idx, int64_t n, const float *Q, int nq, double *st)
{
    size_t sl = KV_PSTATE_LEN(x->dv);
    for (int q = 0; q < nq; q++) {
        kv_partial_clear(st + q * sl, x->dv);
        for (int64_t i = 0; i < n; i++)
            kv_partial_add_one(st + q * sl, x->dv, ref_logit(x, Q + q * x->d, idx[i]), 1.0, x->V + idx[i] * x->dv);
    }
}

/* TOVA by brute force with one budget B: a plain list, linear scans */
typedef struct {
    int64_t B, n;
    int64_t *idx;
    double *score;
    int have_q;
    const float *lq; /* the last query row, and its merged (m, l) */
    double lm, ll;
} tova_ref;

static void tova_ref_ingest(tova_ref *h, const data *x, int64_t g)
{
    double sc = h->have_q && h->ll > 0 ? exp(ref_logit(x, h->lq, g) - h->lm) / h->ll : 0;
    if (h->n < h->B) {
        h->idx[h->n] = g;
        h->score[h->n++] = sc;
        return;
    }
    int64_t worst = 0; /* lowest (score, index) */
    for (int64_t i = 1; i < h->n; i++)
        if (h->score[i] < h->score[worst] || (h->score[i] == h->score[worst] && h->idx[i] < h->idx[worst])) worst = i;
    if (sc < h->score[worst]) return; /* the newcomer wins ties (newer index) */
    h->idx[worst] = g;
    h->score[worst] = sc;
}

/* scores = mean global weight under the call's queries (ml merged) */
static void tova_ref_feedback(tova_ref *h, const data *x, const float *Q, int nq, const double *ml)
{
    for (int64_t i = 0; i < h->n; i++) {
        double sum = 0;
        for (int q = 0; q < nq; q++) sum += exp(ref_logit(x, Q + q * x->d, h->idx[i]) - ml[2 * q]) / ml[2 * q + 1];
        h->score[i] = sum / nq;
    }
    h->have_q = 1;
    h->lq = Q + (nq - 1) * x->d;
    h->lm = ml[2 * (nq - 1)];
    h->ll = ml[2 * (nq - 1) + 1];
}

static int64_t tova_slot(const data *x) { return (int64_t)(x->d + x->dv) * 4 + 8 + 8 + 8; }
static int64_t tova_qbytes(const data *x) { return (int64_t)x->d * 4 + 16; }

/* SnapKV by brute force (see snapkv.c): held list in index order, the ring
 * of the last W queries laid out as snapkv.c lays it (the vote sums run
 * over it in that order), compression by qsort */
typedef struct {
    int64_t B, W, T, kern, n, nbuf, head;
    int64_t *idx;
    float *bq;
    int64_t *bp;
    double *bml;
} snap_ref;

typedef struct { double pooled; int64_t idx; } snap_key;

static int snap_cmp(const void *a, const void *b)
{
    const snap_key *x = a, *y = b;
    if (x->pooled != y->pooled) return x->pooled > y->pooled ? -1 : 1;
    return x->idx > y->idx ? -1 : x->idx < y->idx;
}

static int cmp_idx(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void snap_ref_compress(snap_ref *h, const data *x)
{
    int64_t slack = h->T < h->B / 2 ? h->T : h->B / 2, keep;
    slack = slack < 1 ? 1 : slack;
    keep = h->B - slack;
    double *vote = malloc(sizeof(double) * (size_t)h->n);
    snap_key *k = malloc(sizeof(snap_key) * (size_t)h->n);
    for (int64_t i = 0; i < h->n; i++) {
        double sum = 0;
        int64_t cnt = 0;
        for (int64_t j = 0; j < h->nbuf; j++)
            if (h->bp[j] > h->idx[i]) {
                sum += exp(ref_logit(x, h->bq + j * x->d, h->idx[i]) - h->bml[2 * j]) / h->bml[2 * j + 1];
                cnt++;
            }
        vote[i] = cnt ? sum / (double)cnt : INFINITY;
    }
    for (int64_t i = 0; i < h->n; i++) {
        double best = vote[i];
        for (int64_t j = 0; j < h->n; j++)
            if (llabs(h->idx[j] - h->idx[i]) <= h->kern / 2 && isfinite(vote[j]) && vote[j] > best) best = vote[j];
        k[i] = (snap_key){ best, h->idx[i] };
    }
    qsort(k, (size_t)h->n, sizeof *k, snap_cmp);
    for (int64_t i = 0; i < keep; i++) h->idx[i] = k[i].idx;
    h->n = keep;
    qsort(h->idx, (size_t)h->n, sizeof(int64_t), cmp_idx);
    free(vote);
    free(k);
}

static void snap_ref_ingest(snap_ref *h, const data *x, int64_t g)
{
    if (h->n >= h->B) snap_ref_compress(h, x);
    h->idx[h->n++] = g;
}

static void snap_ref_feedback(snap_ref *h, const data *x, const float *Q, int nq, int64_t p, const double *ml)
{
    for (int q = nq > h->W ? nq - (int)h->W : 0; q < nq; q++) {
        memcpy(h->bq + h->head * x->d, Q + q * x->d, sizeof(float) * (size_t)x->d);
        h->bp[h->head] = p;
        h->bml[2 * h->head] = ml[2 * q];
        h->bml[2 * h->head + 1] = ml[2 * q + 1];
        h->head = (h->head + 1) % h->W;
        h->nbuf += h->nbuf < h->W;
    }
}

static int64_t snap_slot(const data *x) { return (int64_t)(x->d + x->dv) * 4 + 8 + 16 + 4; }
static int64_t snap_qbytes(const data *x) { return (int64_t)x->d * 4 + 8 + 16; }

/* P = 1 == brute force; every P within the budget (tokens + each rank's
 * query rows), the shares filling it; tokens >= n is exact attention */
static void test_eviction_global(int snap)
{
    data x;
    data_gen(&x, 1500, 12, 4, 71 + (uint64_t)snap, 0);
    kv_method_ctx ctx = make_ctx(&x);
    const int64_t Bs[] = { 1, 60, 200, 1500 };
    const char *extra = snap ? ",window=5,period=17,kernel=5" : "";
    const int64_t W = 5, T = 17, KERN = 5;
    for (int bi = 0; bi < 4; bi++)
        for (int P = 1; P <= MAXP; P++) {
            int64_t B = Bs[bi];
            char spec[96];
            snprintf(spec, sizeof spec, "%s:tokens=%lld%s", snap ? "snapkv" : "tova", (long long)B, extra);
            emu e;
            kv_err err = { 0 };
            CHECK(emu_open(&e, spec, &ctx, P, 37, &err) == KV_OK, "%s", err.msg);
            if (!e.ops) return;
            tova_ref h = { B, 0, malloc(sizeof(int64_t) * (size_t)(B + 1)), malloc(sizeof(double) * (size_t)(B + 1)), 0,
                           NULL, 0, 0 };
            snap_ref g = { B, W, T < B / 2 ? T : (B / 2 > 1 ? B / 2 : 1), KERN, 0, 0, 0,
                           malloc(sizeof(int64_t) * (size_t)(B + 1)), malloc(sizeof(float) * (size_t)(W * x.d)),
                           malloc(sizeof(int64_t) * (size_t)W), malloc(sizeof(double) * (size_t)(2 * W)) };
            kv_rng r;
            kv_rng_seed(&r, 13, (uint64_t)P, (uint64_t)bi);
            float Q[2][4 * 12]; /* this call's queries and the previous call's (tova's arrivals) */
            double st[4 * 7], rs[4 * 7], ml[8], worst = 0, worst_exact = 0;
            int64_t fed = 0, short_of = 0, least = B, cur = 0;
            double tol = (4.0 * (double)(B < x.n ? B : x.n) + 32) * DBL_EPSILON * x.vmax;
            for (int64_t p = 1; p <= x.n; p += 1 + (int64_t)kv_rng_below(&r, 12)) {
                int nq = 1 + (int)kv_rng_below(&r, 4);
                cur ^= 1;
                gen_queries(Q[cur], nq, x.d, &r, 2.0);
                emu_advance(&e, x.K, x.V, p);
                emu_partial(&e, Q[cur], nq, p, st);
                for (int q = 0; q < nq; q++) {
                    ml[2 * q] = st[q * 7 + KV_PS_M];
                    ml[2 * q + 1] = st[q * 7 + KV_PS_L];
                }
                if (P == 1) {
                    int64_t held;
                    for (; fed < p; fed++)
                        if (snap) snap_ref_ingest(&g, &x, fed);
                        else tova_ref_ingest(&h, &x, fed);
                    held = snap ? g.n : h.n;
                    list_partial(&x, snap ? g.idx : h.idx, held, Q[cur], nq, rs);
                    if (snap) snap_ref_feedback(&g, &x, Q[cur], nq, p, ml);
                    else tova_ref_feedback(&h, &x, Q[cur], nq, ml);
                    double dd = out_diff(st, rs, nq, x.dv);
                    worst = dd > worst ? dd : worst;
                    CHECK(emu_kept(&e) == held, "%s p=%lld: holds %lld, brute force %lld", spec, (long long)p,
                          (long long)emu_kept(&e), (long long)held);
                }
                if (B >= x.n) { /* nothing evicted: exact attention */
                    for (int q = 0; q < nq; q++) window_ref(&x, Q[cur] + q * x.d, 0, p, rs + q * 7);
                    double dd = out_diff(st, rs, nq, x.dv);
                    worst_exact = dd > worst_exact ? dd : worst_exact;
                    CHECK(emu_kept(&e) == p, "%s P=%d p=%lld: holds %lld", spec, P, (long long)p, (long long)emu_kept(&e));
                }
                /* shares sum to >= B - (P - 1) (one floor each), less what a
                 * rank could not refill after its share grew (as h2o), less
                 * snapkv's slack after a compression (its period part) */
                int64_t lag = P > 1 && p > 12 ? P * (B * 12 / (p - 12) + 1) : 0, slack = snap ? g.T + P : 0;
                if (p >= 4 * B && B < x.n && emu_kept(&e) < B - (P - 1) - lag - slack) short_of++;
                if (p >= 4 * B && emu_kept(&e) < least) least = emu_kept(&e);
            }
            emu_end_epoch(&e);
            size_t budget = (size_t)(snap ? B * snap_slot(&x) + P * W * snap_qbytes(&x) : B * tova_slot(&x) + P * tova_qbytes(&x));
            if (P == 1) CHECK(worst <= tol, "%s: differs from brute force by %.3g > %.3g", spec, worst, tol);
            CHECK(worst_exact <= tol, "%s P=%d: tokens >= n differs from exact by %.3g > %.3g", spec, P, worst_exact, tol);
            CHECK(e.worst <= budget, "%s P=%d: %zu bytes summed over ranks > budget %zu", spec, P, e.worst, budget);
            CHECK(short_of == 0, "%s P=%d: held too few tokens at %lld prefixes", spec, P, (long long)short_of);
            printf("  %s P=%d: peak %zu bytes (budget %zu), holds >= %lld of %lld tokens, vs brute force %.3g\n", spec,
                   P, e.worst, budget, (long long)least, (long long)B, worst);
            free(h.idx); free(h.score);
            free(g.idx); free(g.bq); free(g.bp); free(g.bml);
            emu_close(&e);
        }
    data_free(&x);
}

/* budget= in bytes gives B = (bytes - P * query rows) / slot: the same
 * instance as tokens=B; both knobs, or no token, refused in one line */
static void test_eviction_budget(int snap)
{
    data x;
    data_gen(&x, 600, 12, 4, 23, 0);
    kv_method_ctx ctx = make_ctx(&x);
    const char *m = snap ? "snapkv" : "tova";
    for (int P = 1; P <= 3; P += 2) {
        int64_t per = snap ? snap_slot(&x) : tova_slot(&x), q = snap ? 16 * snap_qbytes(&x) : tova_qbytes(&x);
        int64_t tok = 50, bytes = tok * per + P * q + per - 1;
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
    const char *why[] = { "not both", "holds no token", "holds no token" };
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
    test_h2o_global();
    test_h2o_covering();
    test_h2o_window();
    test_h2o_budget();
    test_resume("topk:k=9", 3);
    test_resume("h2o:tokens=50,recent=12", 3);
    test_resume("h2o:tokens=40,recent=0", 2);
    test_eviction_global(0);
    test_eviction_global(1);
    test_eviction_budget(0);
    test_eviction_budget(1);
    test_resume("tova:tokens=50", 3);
    test_resume("tova:tokens=500", 2);
    test_resume("snapkv:tokens=60,window=4,period=10,kernel=3", 3);
    test_resume("snapkv:tokens=45", 1);
    return kv_test_result("test_global_methods");
}
