/* kivi.c - kivi:bits=<2|4|8>,group=<G>,residual=<R> | kivi:budget=<X>:
 * a KIVI-style quantised KV cache (Liu et al. 2024; ALGORITHMS.md section 7).
 *
 * Keys are quantised per channel over groups of G tokens, values per token
 * over groups of G channels (min(G, dv)), each group with a half zero
 * point and a half scale (methods/quant.h), b bits per element.  Groups
 * are defined by the GLOBAL token index (group g = tokens [gG, gG + G)),
 * and a group is quantised once it is entirely older than the residual
 * window: at prefix p, group g is held quantised iff (g + 1) G <= p - R,
 * every other token in float32.  So the float tokens are the last R to
 * R + G - 1 of the stream (the "full-precision window of recent tokens",
 * a global quantity via the driver's horizon, as for window.c), and the
 * cache at every prefix is the same for any rank count when every group
 * lies inside one rank's shard (shard chunk a multiple of G; the default
 * chunk 4096 is, for G | 4096).  A group cut by a shard boundary is not
 * complete on any rank: each rank keeps its part of it in float for good
 * ("edge" tokens, counted), so then the answer depends on the sharding.
 * Unlike KIVI, keys and values of a token are quantised together (KIVI
 * quantises values as soon as they leave its window, keys per group).
 *
 * Memory (bytes()): the packed codes, the half zero points and scales and
 * the group index (8 bytes) of every group the rank's shard can fill
 * (allocated at the first quantised group: floor(shard / G) groups), plus
 * the float tokens in 16-token pages (methods/tokring.h).  No float copy
 * of a quantised group is kept: a query works in the compressed domain
 * (kernels/qattn.h), the key scales folded into the query and the value
 * scales into the softmax weights, in fixed slices of about 2048 tokens;
 * its per-thread tiles are working memory, not counted (as the exact
 * kernels' are not).  When kv_qk_ok (b in {2, 4, 8}, G and dv multiples
 * of 16, dv / min(G, dv) a power of two: the defaults) the value codes of
 * a record are held as channel words and kernels/qattn_kivi.h answers
 * (2-bit codes two at a time by table lookups); checkpoints hold the
 * value codes token-major whichever layout is in use. 
 *
 * budget=X: the largest bits in {8, 4, 2} whose groups (floor(n / G) of
 * them) plus R + G float tokens (kv_tokring_fit) fit in X; if none does,
 * bits = 2 and the largest residual that fits; if not even R = 0 fits,
 * refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/hugemem.h"
#include "kernels/partial.h"
#include "kernels/qattn.h"
#include "kernels/qattn_kivi.h"
#include "kernels/slices.h"
#include "methods/method.h"
#include "methods/common/quant.h"
#include "methods/common/tokring.h"

typedef struct { int64_t bits, group, residual; kv_budget budget; } kivi_cfg;
KV_CFG_FITS(kivi_cfg);

static const kv_param_def kivi_params[] = {
    KV_PARAM_INT(kivi_cfg, bits, 2, 2, 8, "bits per key and value element: 2, 4 or 8"),
    KV_PARAM_INT(kivi_cfg, group, 32, 1, 4096, "tokens per key group (per-channel scales), channels per value group"),
    KV_PARAM_INT(kivi_cfg, residual, 128, 0, INT64_C(1) << 40, "most recent tokens kept in float32 (global), plus up to group-1"),
    KV_PARAM_BUDGET(kivi_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of bits: bits (then residual) = what fits"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_kivi;

static int kivi_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    const kivi_cfg *c = cfg;
    if (c->bits != 2 && c->bits != 4 && c->bits != 8)
        return kv_params_error(kivi_params, spec, err, "bits=%lld: give 2, 4 or 8", (long long)c->bits);
    if (c->budget.kind && kv_spec_has(spec, "bits"))
        return kv_params_error(kivi_params, spec, err, "give bits or budget, not both");
    return KV_OK;
}

typedef struct {
    kv_method_ctx ctx;
    int bits, G, gv, nvg; /* gv channels per value group, nvg groups per token */
    int64_t R;
    size_t kcb, vcb, rec; /* key code bytes, value code bytes, bytes of a group record */
    int64_t h;            /* no later query is below h (horizon or last partial) */
    int64_t known;        /* the rank has ingested all its tokens < known */
    int64_t ng, gcap;     /* quantised groups held, allocated */
    uint8_t *recs;        /* gcap records: key codes (token-major), key (z, s) x d, value codes, value (z, s) x G nvg */
    int64_t *gidx;        /* gcap group indices */
    kv_tokring tail;      /* float tokens not yet decided, in stream order */
    kv_tokring edge;      /* float tokens of groups no rank holds whole */
    /* the query kernel (kernels/qattn.h) */
    int nb;               /* key blocks of 32 / bits channels (the word layout) */
    int fastv;            /* values take the word path (else decoded to floats) */
    int fast;             /* records in kernels/qattn_kivi.h's layout (value channel words), its kernel */
    kv_qk_plan plan;      /* that layout's offsets */
    float *kpl;           /* kv_qword_scale of each key position (nb 32 / bits) */
    kv_qscratch ws;       /* per-thread tiles: working memory, not state */
    float *qp;            /* the queries times the scale */
    size_t qcap;
    kv_query_cost cost;   /* what the answers read and computed (method.h) */
} kivi_state;

static size_t rec_bytes(int bits, int G, int d, int dv, size_t *kcb, size_t *vcb)
{
    int gv = G < dv ? G : dv, nvg = (dv + gv - 1) / gv, P = 32 / bits;
    size_t k = 4 * (size_t)G * (size_t)((d + P - 1) / P), v = kv_qcode_bytes(bits, (size_t)G * (size_t)dv);
    if (kcb) *kcb = k;
    if (vcb) *vcb = v;
    return k + v + 4 * (size_t)d + 4 * (size_t)G * (size_t)nvg;
}

/* Peak over all ranks for n tokens: the groups plus what R + G float tokens need. */
static int64_t fit_residual(int64_t B, int bits, int64_t G, const kv_method_ctx *ctx)
{
    int64_t groups = ctx->n_total / G * (int64_t)(rec_bytes(bits, (int)G, ctx->d, ctx->dv, NULL, NULL) + 8);
    if (B - groups <= 0) return -1;
    return kv_tokring_fit(B - groups, ctx->d, ctx->dv, ctx->nranks > 0 ? ctx->nranks : 1) - G;
}

/* The query kernel: keys in the word layout (always), values on the word
 * path when kv_qwords_ok; the plane scale of each key position. */
static int plan_kernel(kivi_state *s, kv_err *err)
{
    int P = 32 / s->bits;
    s->nb = (s->ctx.d + P - 1) / P;
    s->fastv = kv_qwords_ok(s->bits, s->ctx.dv, s->gv);
    s->fast = kv_qk_ok(s->bits, s->G, s->ctx.dv);
    kv_qk_plan_init(&s->plan, s->bits, s->G, s->ctx.d, s->ctx.dv);
    s->kpl = kv_malloc(sizeof(float) * (size_t)s->nb * P, err);
    if (!s->kpl) return err->code;
    for (int p = 0; p < s->nb * P; p++) s->kpl[p] = kv_qword_scale(s->bits, p % P);
    return KV_OK;
}

static int kivi_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const kivi_cfg *c = kv_method_cfg(&kv_method_kivi, spec, err);
    if (!c) return err->code;
    if (ctx->semantics != KV_SEM_FULL)
        return kv_params_error(kivi_params, spec, err, "kivi answers full attention only (--semantics full)");
    int bits = (int)c->bits;
    int64_t R = c->residual;
    if (c->budget.kind) {
        int64_t B = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv);
        static const int tries[] = { 8, 4, 2 };
        int chosen = 0;
        for (int i = 0; i < 3 && !chosen; i++)
            if (fit_residual(B, tries[i], c->group, ctx) >= R) chosen = bits = tries[i];
        if (!chosen) {
            bits = 2;
            R = fit_residual(B, 2, c->group, ctx);
            if (R < 0)
                return kv_params_error(kivi_params, spec, err, "budget of %lld bytes does not hold 2-bit groups and "
                                       "group=%lld float tokens", (long long)B, (long long)c->group);
        }
    }
    kivi_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->bits = bits;
    s->G = (int)c->group;
    s->gv = s->G < ctx->dv ? s->G : ctx->dv;
    s->nvg = (ctx->dv + s->gv - 1) / s->gv;
    s->R = R;
    s->rec = rec_bytes(bits, s->G, ctx->d, ctx->dv, &s->kcb, &s->vcb);
    if (plan_kernel(s, err)) {
        free(s);
        return err->code;
    }
    int64_t lim = kv_shard_limit(ctx);
    kv_tokring_init(&s->tail, ctx->d, ctx->dv, lim);
    kv_tokring_init(&s->edge, ctx->d, ctx->dv, lim);
    *out = s;
    return KV_OK;
}

/* Room for need groups: every group the shard can fill when its size is
 * known (what the stream will hold anyway), else 16 doubled; a function of
 * need alone, so a restored checkpoint gets the capacity the saved state had. */
static int64_t gcap_for(const kivi_state *s, int64_t need)
{
    int64_t full = s->ctx.shard_tokens > 0 ? s->ctx.shard_tokens / s->G : 0;
    if (full >= need) return full;
    int64_t c = 16;
    while (c < need) c *= 2;
    return c;
}

static int grow_groups(kivi_state *s, int64_t need, kv_err *err)
{
    if (need <= s->gcap) return KV_OK;
    int64_t c = gcap_for(s, need);
    uint8_t *r = realloc(s->recs, (size_t)c * s->rec);
    if (r) kv_mem_hugepages(r + (size_t)s->gcap * s->rec, (size_t)(c - s->gcap) * s->rec);
    if (r) s->recs = r;
    int64_t *g = r ? realloc(s->gidx, sizeof(int64_t) * (size_t)c) : NULL;
    if (g) s->gidx = g;
    if (!r || !g) return kv_seterr(err, KV_EINTERNAL, "kivi: out of memory holding %lld groups", (long long)c);
    s->gcap = c;
    return KV_OK;
}

/* Quantise the tail's first G tokens (group g) into record ng; -1 when a
 * zero point or scale does not fit in half. */
static int quantise_group(kivi_state *s, uint8_t *r)
{
    int d = s->ctx.d, dv = s->ctx.dv, G = s->G, b = s->bits;
    memset(r, 0, s->rec);
    uint8_t *kc = r, *vc = r + s->kcb + 4 * (size_t)d;
    uint16_t kzs[2], vzs[2];
    float *col = malloc(sizeof(float) * (size_t)G);
    if (!col) return -2;
    int bad = 0;
    int P = 32 / b;
    for (int c = 0; c < d && !bad; c++) { /* keys: per channel, into the word layout (kernels/qattn.h) */
        for (int t = 0; t < G; t++) col[t] = kv_tokring_k(&s->tail, t)[c];
        bad = kv_quantise(col, (size_t)G, 1, b, kc, (size_t)(c / P) * G * P + c % P, (size_t)P, kzs) != 0;
        memcpy(r + s->kcb + 4 * (size_t)c, kzs, 4);
    }
    free(col);
    for (int t = 0; t < G && !bad; t++) /* values: per token, groups of gv channels */
        for (int j = 0; j < s->nvg && !bad; j++) {
            int c0 = j * s->gv, nc = dv - c0 < s->gv ? dv - c0 : s->gv;
            size_t pos = s->fast ? kv_qk_vpos(&s->plan, t, c0) : (size_t)t * dv + c0, step = s->fast ? (size_t)P : 1;
            bad = kv_quantise(kv_tokring_v(&s->tail, t) + c0, (size_t)nc, 1, b, vc, pos, step, vzs) != 0;
            memcpy(vc + s->vcb + 4 * ((size_t)t * s->nvg + j), vzs, 4);
        }
    return bad ? -1 : 0;
}

static int to_edge(kivi_state *s, int64_t n, kv_err *err)
{
    for (int64_t i = 0; i < n; i++) {
        if (kv_tokring_push(&s->edge, kv_tokring_k(&s->tail, 0), kv_tokring_v(&s->tail, 0),
                            kv_tokring_idx(&s->tail, 0), err))
            return err->code;
        kv_tokring_pop(&s->tail);
    }
    return KV_OK;
}

/* Decide the tail's groups entirely older than h - R: quantise a whole
 * one, move a part one (it will never be whole here) to the edge. */
static int compact(kivi_state *s, kv_err *err)
{
    int64_t limit = s->h - s->R, G = s->G;
    while (s->tail.count) {
        int64_t i0 = kv_tokring_idx(&s->tail, 0), g = i0 / G, end = (g + 1) * G;
        if (end > limit) break;
        int64_t in = 0;
        while (in < s->tail.count && in < G && kv_tokring_idx(&s->tail, in) < end) in++;
        if (in == G) {
            uint8_t *r = malloc(s->rec); /* scratch first: a group that stays float allocates nothing */
            int q = r ? quantise_group(s, r) : -2;
            if (q == 0 && grow_groups(s, s->ng + 1, err)) q = -3;
            if (q == 0) {
                memcpy(s->recs + (size_t)s->ng * s->rec, r, s->rec);
                s->gidx[s->ng++] = g;
                for (int64_t t = 0; t < G; t++) kv_tokring_pop(&s->tail);
            }
            free(r);
            if (q == -2) return kv_seterr(err, KV_EINTERNAL, "kivi: out of memory");
            if (q == -3) return err->code;
            if (q == -1 && to_edge(s, G, err)) return err->code; /* beyond half's range: keep in float */
        } else if (i0 != g * G || end <= s->known) {
            if (to_edge(s, in, err)) return err->code;
        } else break; /* the rest of the group is still to come */
    }
    return KV_OK;
}

static void kivi_horizon(void *state, int64_t p)
{
    kivi_state *s = state;
    if (p > s->h) s->h = p;
    kv_err e;
    kv_err_clear(&e);
    compact(s, &e); /* nothing is ingested here: only a tail already whole can be quantised */
    /* an allocation failure leaves tokens in float; the next ingest reports it */
}

static int kivi_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    kivi_state *s = state;
    for (size_t i = 0; i < n; i++) {
        int64_t g = first + (int64_t)i;
        if (kv_tokring_push(&s->tail, K + i * s->ctx.d, V + i * s->ctx.dv, g, err)) return err->code;
        if (g + 1 > s->known) s->known = g + 1;
        if (compact(s, err)) return err->code;
    }
    return KV_OK;
}

typedef struct { kivi_state *s; int64_t per; const float *qp; } slice_arg;

/* Groups per tile: whole groups share a tile (KV_QTILE tokens) when the
 * values take the word path and G divides it, else one group's tokens. */
static int tile_groups(const kivi_state *s)
{
    return s->fastv && s->G <= KV_QTILE && KV_QTILE % s->G == 0 ? KV_QTILE / s->G : 1;
}

/* Floats of one thread's scratch for nq queries (fold_groups' layout). */
static size_t scratch_floats(const kivi_state *s, int nq)
{
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv, nvg = (size_t)s->nvg, kq = (size_t)s->nb * (32 / s->bits);
    size_t tg = (size_t)tile_groups(s);
    kv_qtile_vals tv = { s->ctx.dv, s->nvg, s->gv, s->fastv, s->bits, NULL, NULL, NULL, NULL, 0, 0 };
    return 2 * (kv_qstate_len(&tv) * (size_t)nq + KV_PSTATE_LEN(dv)) + 2 * d + KV_QTILE * (dv + 2 * nvg + 1) +
           KV_QU_FLOATS(dv) + (size_t)nq * tg * (kq + 1);
}

/* Each query's qs and qz for group record r, into qs + q tg kq and qz + q tg
 * (kz, ks: scratch of d floats). */
static void fold_keys(const kivi_state *s, const uint8_t *r, const float *qp, int nq, int tg, float *kz, float *ks,
                      float *qs, float *qz)
{
    int d = s->ctx.d, kq = s->nb * (32 / s->bits);
    kv_qhalves(r + s->kcb, d, kz, ks);
    for (int q = 0; q < nq; q++) { /* channels past d have code 0: their qs is 0 */
        const float *x = qp + (size_t)q * d;
        float *o = qs + (size_t)q * tg * kq;
        for (int p = 0; p < d; p++) o[p] = x[p] * ks[p] * s->kpl[p];
        for (int p = d; p < kq; p++) o[p] = 0;
        qz[(size_t)q * tg] = kv_qdot(x, kz, d);
    }
}

/* Slice i of the groups, in the compressed domain (kernels/qattn.h): per
 * group the key scales fold into the queries (qs = scale q s, qz = scale
 * q . z), logits are qz + qs . code straight from the packed codes (a
 * token per vector lane), and the values fold from their codes with the
 * per-token scales folded into the softmax weights, tile_groups groups
 * per tile.  Values the word path cannot take (kv_qwords_ok) are decoded
 * to floats instead. */
static int fold_groups(const void *arg, int64_t i, const float *Q, int nq, float scale, double *st)
{
    (void)Q;
    (void)scale;
    const slice_arg *a = arg;
    kivi_state *s = a->s;
    int64_t g0 = i * a->per, g1 = (i + 1) * a->per < s->ng ? (i + 1) * a->per : s->ng;
    if (s->fast) {
        float *w = kv_qscratch_get(&s->ws, kv_qk_scratch_floats(&s->plan, nq));
        if (!w) return KV_EINTERNAL;
        kv_qk_fold(&s->plan, s->recs, g0, g1, s->ng, a->qp, nq, st, w);
        return KV_OK;
    }
    int d = s->ctx.d, dv = s->ctx.dv, G = s->G, b = s->bits, nvg = s->nvg, kq = s->nb * (32 / b), tg = tile_groups(s);
    kv_qtile_vals tv = { dv, nvg, s->gv, s->fastv, b, NULL, NULL, NULL, NULL, 0, 0 };
    size_t sl = KV_PSTATE_LEN(dv), ql = kv_qstate_len(&tv), vb = (size_t)dv * b / 8;
    float *w = kv_qscratch_get(&s->ws, scratch_floats(s, nq));
    if (!w) return KV_EINTERNAL;
    double *rl = (double *)w; /* nq states (kv_qstate_len), then one for the merge */
    for (int q = 0; q < nq; q++) kv_qstate_clear(rl + q * ql, ql);
    float *kz = w + 2 * (ql * (size_t)nq + sl), *ks = kz + d, *vc = ks + d, *vz = vc + KV_QTILE * dv,
          *vs = vz + KV_QTILE * nvg, *S = vs + KV_QTILE * nvg, *U = S + KV_QTILE,
          *qs = U + KV_QU_FLOATS(dv), *qz = qs + (size_t)nq * tg * kq;
    tv.v = vc;
    tv.vz = vz;
    tv.vs = vs;
    if (tg > 1) { /* tiles of up to tg whole groups: codes a record apart */
        tv.seg = G;
        tv.segstride = s->rec;
    }
    for (int64_t g = g0; g < g1; g += tg) {
        int ngt = g1 - g < tg ? (int)(g1 - g) : tg;
        int64_t gn = g1 - (g + ngt) < tg ? g1 - (g + ngt) : tg;
        /* the next tile's records, while this one is answered: their scales come first, so a miss stalls */
        for (size_t x = 0; x < (size_t)gn * s->rec; x += 64) __builtin_prefetch(s->recs + (size_t)(g + ngt) * s->rec + x);
        for (int x = 0; x < ngt; x++) {
            const uint8_t *r = s->recs + (size_t)(g + x) * s->rec;
            fold_keys(s, r, a->qp, nq, tg, kz, ks, qs + (size_t)x * kq, qz + x);
            if (tg > 1) kv_qhalves(r + s->kcb + 4 * (size_t)d + s->vcb, G * nvg, vz + (size_t)x * G * nvg, vs + (size_t)x * G * nvg);
        }
        if (tg > 1) {
            tv.codes = s->recs + (size_t)g * s->rec + s->kcb + 4 * (size_t)d;
            for (int q = 0; q < nq; q++) {
                for (int x = 0; x < ngt; x++)
                    kv_qlogits_words(qs + ((size_t)q * tg + x) * kq, qz[q * tg + x], s->recs + (size_t)(g + x) * s->rec,
                                     G, s->nb, b, G, S + x * G);
                kv_qfold_tile(rl + q * ql, S, ngt * G, &tv, U);
            }
            continue;
        }
        const uint8_t *r = s->recs + (size_t)g * s->rec, *vcode = r + s->kcb + 4 * (size_t)d, *vzs = vcode + s->vcb;
        for (int t0 = 0; t0 < G; t0 += KV_QTILE) {
            int nt = G - t0 < KV_QTILE ? G - t0 : KV_QTILE;
            tv.codes = vcode + (size_t)t0 * vb;
            if (s->fastv) kv_qhalves(vzs + 4 * (size_t)t0 * nvg, nt * nvg, vz, vs);
            for (int t = 0; t < nt && !s->fastv; t++)
                for (int j = 0; j < nvg; j++) {
                    int c0 = j * s->gv, nc = dv - c0 < s->gv ? dv - c0 : s->gv;
                    uint16_t h[2];
                    memcpy(h, vzs + 4 * ((size_t)(t0 + t) * nvg + j), 4);
                    kv_dequantise(vcode, (size_t)(t0 + t) * dv + c0, 1, (size_t)nc, b, h, vc + (size_t)t * dv + c0, 1);
                }
            for (int q = 0; q < nq; q++) {
                kv_qlogits_words(qs + (size_t)q * kq, qz[q], r + 4 * (size_t)t0, G, s->nb, b, nt, S);
                kv_qfold_tile(rl + q * ql, S, nt, &tv, U);
            }
        }
    }
    for (int q = 0; q < nq; q++) kv_qstate_merge(st + q * sl, rl + q * ql, &tv, rl + nq * ql);
    return KV_OK;
}

/* The slices of the held groups: fixed (a function of the group count
 * only), so the answer does not depend on the thread count. */
static int fold_quantised(kivi_state *s, const float *Q, int nq, double *st)
{
    int d = s->ctx.d;
    float scale = (float)s->ctx.scale;
    if (!s->ng) return KV_OK;
    if (kv_qscratch_slots(&s->ws)) return KV_EINTERNAL;
    if ((size_t)nq * d > s->qcap) { /* the queries times the scale */
        size_t c = s->qcap ? s->qcap : 256;
        while (c < (size_t)nq * d) c *= 2;
        float *qp = realloc(s->qp, sizeof(float) * c);
        if (!qp) return KV_EINTERNAL;
        s->qp = qp;
        s->qcap = c;
    }
    for (size_t x = 0; x < (size_t)nq * d; x++) s->qp[x] = scale * Q[x];
    slice_arg a = { s, kv_slice_len(s->ng, 2048 / s->G > 0 ? 2048 / s->G : 1, nq), s->qp };
    return kv_fold_slices((s->ng + a.per - 1) / a.per, fold_groups, &a, Q, nq, s->ctx.dv, scale, st);
}

static int kivi_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    kivi_state *s = state;
    size_t sl = KV_PSTATE_LEN(s->ctx.dv);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, s->ctx.dv);
    /* the rank has all its tokens < p: decide what is older than p - R */
    if (p > s->h) s->h = p;
    if (p > s->known) s->known = p;
    kv_err e;
    kv_err_clear(&e);
    if (compact(s, &e)) return KV_EINTERNAL;
    if (nq <= 0) return KV_OK;
    int rc = fold_quantised(s, Q, nq, st);
    if (!rc) rc = kv_tokring_fold(&s->edge, 0, Q, nq, (float)s->ctx.scale, st);
    if (!rc) rc = kv_tokring_fold(&s->tail, 0, Q, nq, (float)s->ctx.scale, st);
    /* the records once per call (the queries share each tile), every float
     * token; per query and quantised token one FMA per key and value code,
     * per group qs and qz (3d), per float token 2 (d + dv) */
    int64_t d = s->ctx.d, dv = s->ctx.dv, nf = s->tail.count + s->edge.count;
    s->cost.read_bytes += (double)s->ng * (double)s->rec + (double)nf * (double)((d + dv) * 4 + 8);
    s->cost.read_tokens += (double)(s->ng * s->G + nf);
    s->cost.flops += (double)nq * ((double)s->ng * (double)(s->G * 2 * (d + dv) + 3 * d) + (double)nf * 2 * (d + dv));
    return rc;
}

static void kivi_cost(const void *state, kv_query_cost *c) { *c = ((const kivi_state *)state)->cost; }

static size_t kivi_bytes(const void *state)
{
    const kivi_state *s = state;
    return (size_t)s->gcap * (s->rec + sizeof(int64_t)) + kv_tokring_bytes(&s->tail) + kv_tokring_bytes(&s->edge);
}

static void kivi_extra(const void *state, kv_method_extra *x)
{
    const kivi_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->ng * s->G + s->tail.count + s->edge.count;
}

static void kivi_free(void *state)
{
    kivi_state *s = state;
    if (!s) return;
    free(s->recs);
    free(s->gidx);
    free(s->kpl);
    free(s->qp);
    kv_qscratch_free(&s->ws);
    kv_tokring_free(&s->tail);
    kv_tokring_free(&s->edge);
    free(s);
}

/* the sealed payload (methods/quant.h): h, known, the groups, the two rings */
static void kivi_payload(const void *state, kv_buf *b)
{
    const kivi_state *s = state;
    kv_buf_put_i64(b, s->h);
    kv_buf_put_i64(b, s->known);
    kv_buf_put_arr(b, s->gidx, sizeof(int64_t) * (size_t)s->ng);
    if (s->fast) kv_qk_put_records(&s->plan, s->recs, (size_t)s->ng, b); /* value codes token-major */
    else kv_buf_put_arr(b, s->recs, s->rec * (size_t)s->ng);
    kv_tokring_save(&s->tail, b);
    kv_tokring_save(&s->edge, b);
}

static void kivi_save(const void *state, kv_buf *out) { kv_qsave_sealed(out, kivi_payload, state); }

static int kivi_load(void *state, kv_rd *in, kv_err *err)
{
    kivi_state *s = state;
    kv_rd rd;
    int64_t h, known, lim = kv_shard_limit(&s->ctx), G = s->G;
    void *gi = NULL, *rc = NULL;
    size_t ng = 0, nr = 0;
    if (kv_qload_sealed(in, &rd, err) || kv_rd_i64(&rd, &h, err) || kv_rd_i64(&rd, &known, err) ||
        kv_rd_arr(&rd, &gi, sizeof(int64_t), (size_t)(lim / G), &ng, err) ||
        kv_rd_arr(&rd, &rc, s->rec, (size_t)(lim / G), &nr, err))
        goto fail;
    const int64_t *g = gi;
    int bad = h < 0 || h > s->ctx.n_total || known < 0 || known > s->ctx.n_total || nr != ng;
    for (size_t i = 0; i < ng && !bad; i++)
        bad = g[i] < 0 || (g[i] + 1) * G > h - s->R || (g[i] + 1) * G > known || (i && g[i] <= g[i - 1]);
    for (size_t i = 0; i < ng && !bad; i++) {
        const uint8_t *r = (const uint8_t *)rc + i * s->rec;
        uint16_t zs[2];
        for (int c = 0; c < s->ctx.d && !bad; c++) {
            memcpy(zs, r + s->kcb + 4 * (size_t)c, 4);
            bad = !kv_qparams_ok(zs);
        }
        const uint8_t *vp = r + s->kcb + 4 * (size_t)s->ctx.d + s->vcb;
        for (int64_t j = 0; j < G * s->nvg && !bad; j++) {
            memcpy(zs, vp + 4 * (size_t)j, 4);
            bad = !kv_qparams_ok(zs);
        }
    }
    if (bad) {
        kv_seterr(err, KV_EINPUT, "checkpoint: kivi state has a bad group table or scale");
        goto fail;
    }
    if (s->fast && kv_qk_records_in(&s->plan, rc, ng)) {
        kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring kivi groups");
        goto fail;
    }
    if (kv_qrings_load(&s->tail, &s->edge, &rd, ng ? (g[ng - 1] + 1) * G : 0, known, (int64_t)ng * G, lim,
                       s->ctx.n_total, err))
        goto fail; /* the tail is after the last group */
    s->h = h;
    s->known = known;
    s->ng = (int64_t)ng;
    if (ng) {
        free(s->recs);
        free(s->gidx);
        s->recs = rc;
        s->gidx = gi;
        rc = gi = NULL;
        int64_t c = gcap_for(s, (int64_t)ng); /* the capacity the saved state had */
        s->gcap = 0;
        uint8_t *r2 = realloc(s->recs, (size_t)c * s->rec);
        int64_t *g2 = r2 ? realloc(s->gidx, sizeof(int64_t) * (size_t)c) : NULL;
        if (r2) s->recs = r2;
        if (g2) s->gidx = g2;
        if (!r2 || !g2) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring kivi groups");
        s->gcap = c;
    }
    free(gi);
    free(rc);
    return KV_OK;
fail:
    free(gi);
    free(rc);
    return err->code;
}

static int64_t kivi_max_bytes(const void *state)
{
    const kivi_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx);
    /* the groups, and (without a horizon) float tokens up to the whole shard in either ring */
    return gcap_for(s, lim / s->G > 0 ? lim / s->G : 1) * (int64_t)(s->rec + sizeof(int64_t)) +
           2 * kv_tokring_max_bytes(s->ctx.d, s->ctx.dv, lim);
}

const kv_method_ops kv_method_kivi = {
    .name = "kivi",
    .kind = "quantisation",
    .summary = "KIVI: keys quantised per channel, values per token (b bits, half scales), last R tokens in float",
    .budget = "counted as packed: b bits per element plus half zero points and scales per group, float residual "
              "(budget=X: bits, then residual, from X)",
    .params = kivi_params,
    .cfg_size = sizeof(kivi_cfg),
    .check = kivi_check,
    .create = kivi_create,
    .horizon = kivi_horizon,
    .ingest = kivi_ingest,
    .partial = kivi_partial,
    .bytes = kivi_bytes,
    .extra = kivi_extra,
    .free = kivi_free,
    .save = kivi_save,
    .load = kivi_load,
    .max_bytes = kivi_max_bytes,
    .conform = { "bits=2,group=8,residual=20;bits=8,residual=0;bits=4,group=5,residual=7", KV_PINV_ROUNDING },
    .cost = kivi_cost,
};
