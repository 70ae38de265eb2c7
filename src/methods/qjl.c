/* qjl.c - qjl:m=<bits>,vbits=<32|8|4|2>,residual=<R>,seed=<n> | qjl:budget=<X>:
 * QJL, a 1-bit quantised Johnson-Lindenstrauss transform of the keys
 * (Zandieh, Daliri, Han 2024; ALGORITHMS.md section 7).
 *
 * A Gaussian matrix S (m x d, entries N(0, 1) hashed from (seed, stream,
 * row, column): the same on every rank, so the sketch of a token does not
 * depend on who holds it) maps each key k to the m sign bits of S k, kept
 * with |k|.  For a query q,
 *     <q, k> ~ sqrt(pi/2) / m * |k| * <S q, sign(S k)>
 * is unbiased (E[<s, q> sign(<s, k>)] = sqrt(2/pi) <q, k> / |k| for
 * s ~ N(0, I)), with variance ((pi/2) |q|^2 |k|^2 - <q, k>^2) / m; the
 * logit is scale times it.  <S q, sign(S k)> is read from tables of the
 * sums of S q over each nibble's set bits (m/4 lookups per key, a key per
 * vector lane: kernels/qjl_kern.h, kv_qjl_signs, the sign bits in 16-key
 * blocks so a vector of them is one load); the tiles
 * fold as in kernels/qattn.h (values from their codes).  Values are
 * kept in float32 (vbits=32) or quantised per token in groups of `group`
 * channels with half zero point and scale (methods/quant.h).  The last R
 * tokens of the stream (global, via the driver's horizon) stay in float:
 * token i is quantised once every later query has prefix > i + R, so the
 * cache at every prefix is the same for any rank count.  A token whose
 * value is beyond half's range (|v| > 65504, vbits < 32) stays in float.
 *
 * Memory (bytes()): per quantised token m/8 sign bytes (in 16-key blocks,
 * the last block whole), a float32 norm and its value (dv floats, or codes
 * plus half zero point and scale per group; 2-bit codes as two bit planes
 * in 16-token blocks when dv, the group and the shard are multiples of 16,
 * the same bytes), the rows
 * allocated for the whole shard at the first quantised token (as exact
 * does); the float tokens in 16-token pages; and S itself (m d floats on
 * every rank: P copies, counted).  Checkpoints keep the row layout and
 * packed codes of before.
 *
 * budget=X: the first vbits of 32, 8, 4, 2 (or the one given) at which the
 * largest m (a multiple of 8, at most 8 d) that fits n tokens, P copies of S
 * and R + 1 float tokens is >= d, with that m; failing that vbits = 2 (or
 * the one given) with the largest m >= 8 that fits; else refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/hugemem.h"
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "kernels/qattn.h"
#include "kernels/qjl_kern.h"
#include "kernels/slices.h"
#include "methods/method.h"
#include "methods/common/quant.h"
#include "methods/common/tokring.h"
#include "methods/qjl_quant.h"

#define QJL_SALT 0x716a6cULL /* "qjl" */

typedef struct { int64_t m, vbits, group, residual, seed; kv_budget budget; } qjl_cfg;
KV_CFG_FITS(qjl_cfg);

static const kv_param_def qjl_params[] = {
    KV_PARAM_INT_DERIVED(qjl_cfg, m, -1, "2d", 8, 65536, "projected dimension: sign bits per key (a multiple of 8; default 2d rounded up to one)"),
    KV_PARAM_INT(qjl_cfg, vbits, 32, 2, 32, "bits per value element: 32 (float32), 8, 4 or 2 (per-token groups)"),
    KV_PARAM_INT(qjl_cfg, group, 32, 1, 4096, "channels per value group when vbits < 32"),
    KV_PARAM_INT(qjl_cfg, residual, 32, 0, INT64_C(1) << 40, "most recent tokens kept in float32 (global)"),
    KV_PARAM_INT_DERIVED(qjl_cfg, seed, -1, "--seed", 0, INT64_MAX, "projection seed (the stream is mixed in, never the rank)"),
    KV_PARAM_BUDGET(qjl_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of m: m (and vbits) = what fits"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_qjl;

#define QJL_BLK KV_DOT_BLK /* tokens sketched together at ingest */

static int qjl_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    const qjl_cfg *c = cfg;
    if (c->m != -1 && c->m % 8)
        return kv_params_error(qjl_params, spec, err, "m=%lld: give a multiple of 8", (long long)c->m);
    if (c->vbits != 32 && c->vbits != 8 && c->vbits != 4 && c->vbits != 2)
        return kv_params_error(qjl_params, spec, err, "vbits=%lld: give 32, 8, 4 or 2", (long long)c->vbits);
    if (c->budget.kind && c->m != -1) return kv_params_error(qjl_params, spec, err, "give m or budget, not both");
    return KV_OK;
}

typedef struct {
    kv_method_ctx ctx;
    int m, mb, vbits, gv, nvg; /* mb sign bytes per key; gv channels per value group, nvg groups */
    size_t vcb;                /* value code bytes per token (vbits < 32) */
    int64_t R;
    float *S;                  /* m x d, in kernels/qjl_kern.h's row blocks */
    int64_t h, known;          /* as in kivi.c: horizon, all tokens < known ingested */
    int64_t n, cap;            /* quantised tokens held, rows allocated */
    uint8_t *sig;              /* cap x mb, in 16-key blocks (kernels/qjl_kern.h) */
    float *norm;               /* cap */
    float *vf;                 /* cap x dv (vbits 32) */
    uint8_t *vq;               /* cap x vcb (vbits < 32) */
    uint16_t *vzs;             /* cap x nvg x 2 */
    uint8_t *qcodes;           /* scratch: one token's value codes, then QJL_BLK tokens' sign bits */
    float *dots;               /* scratch: QJL_BLK tokens' m sketch dots */
    uint16_t *qzs;
    kv_tokring tail, edge;
    /* the query kernel (kernels/qattn.h) */
    int fastv;                 /* value codes take the word path (else decoded to floats) */
    int planes;                /* 2-bit values stored and folded as bit planes (kernels/qjl_kern.h) */
    kv_qscratch ws;            /* per-thread tiles: working memory, not state */
    float *tab;                /* per query: nibble tables of S q and its sum; then S q */
    size_t tcap;
    kv_query_cost cost;        /* what the answers read and computed (method.h) */
} qjl_state;

static int64_t value_bytes(int vbits, int dv, int64_t group)
{
    if (vbits == 32) return 4 * (int64_t)dv;
    int64_t gv = group < dv ? group : dv;
    return (int64_t)kv_qcode_bytes(vbits, (size_t)dv) + 4 * ((dv + gv - 1) / gv);
}

/* the largest m (multiple of 8, <= 8d) whose cache fits B over all ranks; 0 if none */
static int64_t fit_m(int64_t B, int vbits, int64_t group, int64_t R, const kv_method_ctx *ctx)
{
    int64_t P = ctx->nranks > 0 ? ctx->nranks : 1, best = 0;
    for (int64_t m = 8; m <= 8 * (int64_t)ctx->d; m += 8) {
        int64_t need = ctx->n_total * (m / 8 + 4 + value_bytes(vbits, ctx->dv, group)) + P * m * ctx->d * 4 +
                       P * (KV_QJL_KB - 1) * (m / 8); /* sign rows in whole 16-key blocks */
        if (B - need > 0 && kv_tokring_fit(B - need, ctx->d, ctx->dv, (int)P) >= R + 1) best = m;
    }
    return best;
}

static void qjl_free(void *state);

static int qjl_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const qjl_cfg *c = kv_method_cfg(&kv_method_qjl, spec, err);
    if (!c) return err->code;
    if (ctx->semantics != KV_SEM_FULL)
        return kv_params_error(qjl_params, spec, err, "qjl answers full attention only (--semantics full)");
    int64_t m = c->m == -1 ? (2 * (int64_t)ctx->d + 7) / 8 * 8 : c->m; /* whole sign bytes */
    int vbits = (int)c->vbits;
    if (c->budget.kind) {
        int64_t B = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv);
        static const int tries[] = { 32, 8, 4, 2 };
        int given = kv_spec_has(spec, "vbits");
        m = 0;
        for (int i = 0; i < 4 && !m; i++) {
            if (given && tries[i] != vbits) continue;
            int64_t f = fit_m(B, tries[i], c->group, c->residual, ctx);
            if (f >= ctx->d) { m = f; vbits = tries[i]; }
        }
        if (!m) {
            if (!given) vbits = 2;
            m = fit_m(B, vbits, c->group, c->residual, ctx);
        }
        if (!m)
            return kv_params_error(qjl_params, spec, err, "budget of %lld bytes does not hold 8 sign bits, a norm "
                                   "and a %d-bit value per token", (long long)B, vbits);
    }
    qjl_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->m = (int)m;
    s->mb = (int)(m / 8);
    s->vbits = vbits;
    s->gv = c->group < ctx->dv ? (int)c->group : ctx->dv;
    s->nvg = (ctx->dv + s->gv - 1) / s->gv;
    s->vcb = vbits == 32 ? 0 : kv_qcode_bytes(vbits, (size_t)ctx->dv);
    s->R = c->residual;
    s->S = kv_malloc(sizeof(float) * (size_t)m * (size_t)ctx->d, err);
    s->qcodes = kv_malloc(s->vcb + 1 + QJL_BLK * (size_t)s->mb, err);
    s->qzs = s->qcodes ? kv_malloc(sizeof(uint16_t) * 2 * (size_t)s->nvg, err) : NULL;
    s->dots = s->qzs ? kv_malloc(sizeof(float) * QJL_BLK * (size_t)m, err) : NULL;
    if (!s->S || !s->dots) {
        free(s->S);
        free(s->dots);
        free(s->qcodes);
        free(s->qzs);
        free(s);
        return err->code;
    }
    /* the query kernel reads value codes as words (kernels/qattn.h) when it can */
    s->fastv = vbits < 32 && kv_qwords_ok((int)vbits, ctx->dv, s->gv);
    /* 2-bit values as bit planes in 16-token blocks (kernels/qjl_kern.h;
     * rows <= 256 B) when the rows are whole blocks: a shard of a multiple
     * of 16 tokens, or of unknown size (rows in powers of 2 from 1024), so
     * they take the bytes of the packed rows, no more */
    s->planes = vbits == 2 && ctx->dv % 16 == 0 && s->gv % 16 == 0 && ctx->dv <= 1024 &&
                (ctx->shard_tokens <= 0 || ctx->shard_tokens % KV_QJL_KB == 0);
    uint64_t seed = c->seed < 0 ? ctx->seed : (uint64_t)c->seed;
    float *S = kv_malloc(sizeof(float) * (size_t)ctx->d, err); /* a row of S, then into its block */
    if (!S) {
        qjl_free(s);
        return err->code;
    }
    for (int64_t j = 0; j < m; j++) {
        for (int x = 0; x < ctx->d; x++)
            S[x] = (float)kv_hash_normal(seed ^ QJL_SALT, (uint64_t)ctx->stream, (uint64_t)j, (uint64_t)x);
        kv_qjl_row_put(s->S, (int)m, ctx->d, (int)j, S);
    }
    free(S);
    int64_t lim = kv_shard_limit(ctx);
    kv_tokring_init(&s->tail, ctx->d, ctx->dv, lim);
    kv_tokring_init(&s->edge, ctx->d, ctx->dv, lim);
    *out = s;
    return KV_OK;
}

/* rows for need tokens: the whole shard when its size is known, else 1024 doubled */
static int64_t cap_for(const qjl_state *s, int64_t need)
{
    if (s->ctx.shard_tokens > 0 && need <= s->ctx.shard_tokens) return s->ctx.shard_tokens;
    int64_t c = 1024;
    while (c < need) c *= 2;
    return c;
}

/* the sign rows of cap tokens: whole 16-key blocks (kernels/qjl_kern.h) */
static size_t sig_bytes(const qjl_state *s, int64_t cap)
{
    return (size_t)((cap + KV_QJL_KB - 1) / KV_QJL_KB) * KV_QJL_KB * (size_t)s->mb;
}

static int grow_rows(qjl_state *s, int64_t need, kv_err *err)
{
    if (need <= s->cap) return KV_OK;
    size_t c = (size_t)cap_for(s, need), dv = (size_t)s->ctx.dv;
    void *p;
    int ok = 1;
#define GROW(f, sz) do { size_t z_ = (sz); if (ok && (p = realloc(s->f, z_ > 0 ? z_ : 1))) { kv_mem_hugepages(p, z_); s->f = p; } else ok = 0; } while (0)
    size_t cb = (size_t)((c + KV_QJL_KB - 1) / KV_QJL_KB) * KV_QJL_KB; /* whole blocks */
    GROW(sig, cb * (size_t)s->mb);
    GROW(norm, c * sizeof(float));
    if (s->vbits == 32) GROW(vf, c * dv * sizeof(float));
    else {
        GROW(vq, (s->planes ? cb : c) * s->vcb); /* planes: c is whole blocks (create) */
        GROW(vzs, c * (size_t)s->nvg * 2 * sizeof(uint16_t));
    }
#undef GROW
    if (!ok) return kv_seterr(err, KV_EINTERNAL, "qjl: out of memory holding %zu tokens", c);
    s->cap = (int64_t)c;
    return KV_OK;
}

static size_t row_bytes(const qjl_state *s)
{
    return (size_t)s->mb + sizeof(float) +
           (s->vbits == 32 ? sizeof(float) * (size_t)s->ctx.dv : s->vcb + 4 * (size_t)s->nvg);
}

/* sg[t] = the m sign bits of S k_t (bit set: >= 0), t < nt <= QJL_BLK, each
 * <S_j, k_t> bitwise kv_dot_fixed's (S in kv_qjl_dots' row blocks); dots:
 * scratch of m QJL_BLK floats */
static void sketch_block(const float *S, int m, int d, const float *const *k, int nt, uint8_t *sg, int mb,
                         float *dots)
{
    kv_qjl_dots(S, m, d, k, nt, dots);
    for (int t = 0; t < nt; t++) kv_qjl_pack_signs(dots + (size_t)t * m, m, sg + (size_t)t * mb); /* m: whole bytes */
}

/* Quantise the tail's first token into row n (its sign bits and norm given); -1 when its value is beyond half. */
static int quantise_front(qjl_state *s, const uint8_t *signs, float norm, kv_err *err)
{
    int dv = s->ctx.dv;
    const float *v = kv_tokring_v(&s->tail, 0);
    uint8_t *codes = s->qcodes;
    uint16_t *zs = s->qzs, bits[128]; /* planes: dv / 8 <= 128 words */
    int direct = s->planes ? kv_qjl_quant_planes(v, dv, s->gv, bits, zs) : 1; /* 1: not taken */
    if (direct < 0) return -1;
    if (s->vbits != 32 && direct) {
        memset(codes, 0, s->vcb);
        for (int j = 0; j < s->nvg; j++) {
            int c0 = j * s->gv, nc = dv - c0 < s->gv ? dv - c0 : s->gv;
            if (kv_quantise(v + c0, (size_t)nc, 1, s->vbits, codes, (size_t)c0, 1, zs + 2 * j)) return -1;
        }
    }
    if (grow_rows(s, s->n + 1, err)) return err->code;
    kv_qjl_sig_put(s->sig, s->mb, s->n, signs);
    s->norm[s->n] = norm;
    if (s->vbits == 32) memcpy(s->vf + (size_t)s->n * dv, v, sizeof(float) * (size_t)dv);
    else {
        if (s->planes && !direct) kv_qjl_planes_or(bits, dv, s->vq, s->n);
        else if (s->planes) kv_qjl_planes_put(codes, dv, s->vq, s->n);
        else memcpy(s->vq + (size_t)s->n * s->vcb, codes, s->vcb);
        memcpy(s->vzs + (size_t)s->n * s->nvg * 2, zs, sizeof(uint16_t) * 2 * (size_t)s->nvg);
    }
    s->n++;
    return KV_OK;
}

/* Quantise the tail's tokens older than h - R, their sketches QJL_BLK at a time. */
static int compact(qjl_state *s, kv_err *err)
{
    uint8_t *sg = s->qcodes + s->vcb + 1;
    while (s->tail.count && kv_tokring_idx(&s->tail, 0) < s->h - s->R) {
        const float *k[QJL_BLK];
        int nt = 0;
        while (nt < QJL_BLK && nt < s->tail.count && kv_tokring_idx(&s->tail, nt) < s->h - s->R) {
            k[nt] = kv_tokring_k(&s->tail, nt);
            nt++;
        }
        float nk[QJL_BLK];
        sketch_block(s->S, s->m, s->ctx.d, k, nt, sg, s->mb, s->dots);
        kv_qjl_norms(k, nt, s->ctx.d, nk);
        for (int t = 0; t < nt; t++) {
            int q = quantise_front(s, sg + (size_t)t * s->mb, nk[t], err);
            if (q > 0) return q;
            if (q < 0 && kv_tokring_push(&s->edge, kv_tokring_k(&s->tail, 0), kv_tokring_v(&s->tail, 0),
                                         kv_tokring_idx(&s->tail, 0), err))
                return err->code;
            kv_tokring_pop(&s->tail);
        }
    }
    return KV_OK;
}

static void qjl_horizon(void *state, int64_t p)
{
    qjl_state *s = state;
    if (p > s->h) s->h = p;
    kv_err e;
    kv_err_clear(&e);
    compact(s, &e); /* an allocation failure leaves tokens in float; the next ingest reports it */
}

static int qjl_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    qjl_state *s = state;
    for (size_t i = 0; i < n; i++) {
        int64_t g = first + (int64_t)i;
        if (kv_tokring_push(&s->tail, K + i * s->ctx.d, V + i * s->ctx.dv, g, err)) return err->code;
        if (g + 1 > s->known) s->known = g + 1;
        if (((i + 1) % QJL_BLK == 0 || i + 1 == n) && compact(s, err)) return err->code; /* a block's sketches at once */
    }
    return KV_OK;
}

typedef struct { qjl_state *s; int64_t per; } slice_arg;

/* Tokens [i per, (i + 1) per) of the quantised rows, tile by tile
 * (kernels/qattn.h): a logit is c |k| <S q, sign(S k)>, read from the
 * query's tables of sums of S q over each nibble's set bits (kv_qjl_signs),
 * and the tile folds into the double state; quantised values fold from
 * their codes (bit planes: kv_qjl_fold_planes, tables of the subset sums
 * of each token quad's weights looked up by the planes' nibbles), the
 * per-token scales folded
 * into the softmax weights (or, on a layout the kernel cannot take,
 * decoded to floats). */
static int fold_slice(const void *arg, int64_t i, const float *Q, int nq, float scale, double *st)
{
    (void)Q;
    const slice_arg *a = arg;
    qjl_state *s = a->s;
    int dv = s->ctx.dv, mb = s->mb, nvg = s->nvg;
    kv_qtile_vals tv = { dv, nvg, s->gv, s->fastv && !s->planes, s->vbits, NULL, NULL, NULL, NULL, 0, 0 };
    size_t sl = KV_PSTATE_LEN(dv), ql = kv_qstate_len(&tv);
    int64_t t0 = i * a->per, t1 = t0 + a->per < s->n ? t0 + a->per : s->n;
    float *w = kv_qscratch_get(&s->ws, 2 * (ql * (size_t)nq + sl) + KV_QTILE * ((size_t)dv + 2 * (size_t)nvg + 1) +
                                           KV_QU_FLOATS(dv));
    if (!w) return KV_EINTERNAL;
    double *rl = (double *)w; /* nq states (kv_qstate_len), then one for the merge */
    for (int q = 0; q < nq; q++) kv_qstate_clear(rl + q * ql, ql);
    float *vc = w + 2 * (ql * (size_t)nq + sl), *vz = vc + KV_QTILE * (size_t)dv, *vs = vz + KV_QTILE * nvg,
          *S = vs + KV_QTILE * nvg, *U = S + KV_QTILE;
    tv.vz = vz;
    tv.vs = vs;
    const float c = (float)(sqrt(M_PI / 2) / s->m) * scale;
    for (int64_t a0 = t0; a0 < t1; a0 += KV_QTILE) {
        int nt = t1 - a0 < KV_QTILE ? (int)(t1 - a0) : KV_QTILE;
        tv.v = s->vbits == 32 ? s->vf + (size_t)a0 * dv : vc;
        tv.codes = s->vq ? s->vq + (size_t)a0 * s->vcb : NULL;
        if (s->fastv || s->planes) kv_qhalves((const uint8_t *)(s->vzs + (size_t)a0 * nvg * 2), nt * nvg, vz, vs);
        for (int t = 0; t < nt && s->vbits != 32 && !s->fastv && !s->planes; t++) {
            size_t row = (size_t)(a0 + t);
            const uint16_t *zs = s->vzs + row * nvg * 2;
            for (int j = 0; j < nvg; j++) {
                int c0 = j * s->gv, nc = dv - c0 < s->gv ? dv - c0 : s->gv;
                kv_dequantise(s->vq + row * s->vcb, (size_t)c0, 1, (size_t)nc, s->vbits, zs + 2 * j,
                              vc + (size_t)t * dv + c0, 1);
            }
        }
        for (int q = 0; q < nq; q++) {
            const float *T = s->tab + (size_t)q * (mb * 32 + 1);
            kv_qjl_signs(T, s->sig + (size_t)a0 * mb, mb, nt, S); /* a0: a whole block's first key */
            for (int t = 0; t < nt; t++) S[t] = c * s->norm[a0 + t] * (2 * S[t] - T[mb * 32]);
            if (s->planes) kv_qjl_fold_planes(rl + q * ql, S, nt, dv, s->gv, tv.codes, vz, vs, vc);
            else kv_qfold_tile(rl + q * ql, S, nt, &tv, U);
        }
    }
    for (int q = 0; q < nq; q++) kv_qstate_merge(st + q * sl, rl + q * ql, &tv, rl + nq * ql);
    return KV_OK;
}

static int qjl_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    qjl_state *s = state;
    int d = s->ctx.d, mb = s->mb;
    size_t sl = KV_PSTATE_LEN(s->ctx.dv), per = (size_t)mb * 32 + 1;
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, s->ctx.dv);
    if (p > s->h) s->h = p;
    if (p > s->known) s->known = p;
    kv_err e;
    kv_err_clear(&e);
    if (compact(s, &e)) return KV_EINTERNAL;
    if (nq <= 0) return KV_OK;
    int rc = KV_OK;
    if (s->n) {
        if (kv_qscratch_slots(&s->ws)) return KV_EINTERNAL;
        size_t need = (size_t)nq * per + (size_t)s->m;
        if (need > s->tcap) { /* per query: 2 mb tables of 16 sums, then the sum of S q; then S q itself */
            size_t c = s->tcap ? s->tcap : 4096;
            while (c < need) c *= 2;
            float *t = realloc(s->tab, sizeof(float) * c);
            if (!t) return KV_EINTERNAL;
            s->tab = t;
            s->tcap = c;
        }
        float *y = s->tab + (size_t)nq * per;
        for (int q = 0; q < nq; q++) {
            float tot = 0, *tq = s->tab + (size_t)q * per;
            const float *qq = Q + (size_t)q * d;
            kv_qjl_dots(s->S, s->m, d, &qq, 1, y); /* y_j = kv_dot_fixed(S_j, q) */
            for (int j = 0; j < s->m; j++) tot += y[j];
            tq[(size_t)mb * 32] = tot;
            kv_qsign_tables(y, mb, tq);
        }
        slice_arg a = { s, kv_slice_len(s->n, 1024, nq) };
        rc = kv_fold_slices((s->n + a.per - 1) / a.per, fold_slice, &a, Q, nq, s->ctx.dv, (float)s->ctx.scale, st);
    }
    if (!rc) rc = kv_tokring_fold(&s->edge, 0, Q, nq, (float)s->ctx.scale, st);
    if (!rc) rc = kv_tokring_fold(&s->tail, 0, Q, nq, (float)s->ctx.scale, st);
    /* the rows once per call and S per query (it makes S q); per query S q
     * (2 m d); per quantised token the estimator's inner product <S q, sign>,
     * m signed adds (what the method must do: the nibble tables are this
     * kernel's way of doing them, in m/4 lookups), 3 multiplies and one FMA
     * per value; per float token 2 (d + dv) */
    int64_t dd = s->ctx.d, dv = s->ctx.dv, nf = s->tail.count + s->edge.count, m = s->m;
    s->cost.read_bytes += (double)s->n * (double)row_bytes(s) + (s->n ? (double)nq * 4.0 * (double)(m * dd) : 0) +
                          (double)nf * (double)((dd + dv) * 4 + 8);
    s->cost.read_tokens += (double)(s->n + nf);
    s->cost.flops += (double)nq * ((s->n ? (double)(2 * m * dd) : 0) + (double)s->n * (double)(m + 3 + 2 * dv) +
                                   (double)nf * 2 * (dd + dv));
    return rc;
}

static void qjl_cost(const void *state, kv_query_cost *c) { *c = ((const qjl_state *)state)->cost; }

static size_t qjl_bytes(const void *state)
{
    const qjl_state *s = state;
    return (size_t)s->cap * (row_bytes(s) - (size_t)s->mb) + sig_bytes(s, s->cap) +
           sizeof(float) * (size_t)s->m * (size_t)s->ctx.d +
           kv_tokring_bytes(&s->tail) + kv_tokring_bytes(&s->edge);
}

static void qjl_extra(const void *state, kv_method_extra *x)
{
    const qjl_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->n + s->tail.count + s->edge.count;
}

static void qjl_free(void *state)
{
    qjl_state *s = state;
    if (!s) return;
    free(s->S);
    free(s->sig);
    free(s->norm);
    free(s->vf);
    free(s->vq);
    free(s->vzs);
    free(s->qcodes);
    free(s->qzs);
    free(s->dots);
    free(s->tab);
    kv_qscratch_free(&s->ws);
    kv_tokring_free(&s->tail);
    kv_tokring_free(&s->edge);
    free(s);
}

/* the sign bytes as kv_buf_put_arr of the rows, key by key, would write
 * them (the checkpoint keeps the row layout, not the blocks) */
static void put_sig_rows(const qjl_state *s, kv_buf *b)
{
    uint8_t row[256];
    kv_buf_put_i64(b, (int64_t)((size_t)s->n * (size_t)s->mb));
    for (int64_t t = 0; t < s->n; t++)
        for (int j0 = 0; j0 < s->mb; j0 += (int)sizeof row) {
            int nb = s->mb - j0 < (int)sizeof row ? s->mb - j0 : (int)sizeof row;
            for (int j = 0; j < nb; j++) row[j] = s->sig[kv_qjl_sig_off(s->mb, t, j0 + j)];
            kv_buf_put(b, row, (size_t)nb);
        }
}

/* the rows' sign bytes from the reader into the blocks */
static int get_sig_rows(qjl_state *s, kv_rd *rd, size_t n, kv_err *err)
{
    uint8_t row[256];
    for (size_t t = 0; t < n; t++)
        for (int j0 = 0; j0 < s->mb; j0 += (int)sizeof row) {
            int nb = s->mb - j0 < (int)sizeof row ? s->mb - j0 : (int)sizeof row;
            if (kv_rd_get(rd, row, (size_t)nb, err)) return err->code;
            if (t % KV_QJL_KB == 0 && j0 == 0) memset(s->sig + t * (size_t)s->mb, 0, KV_QJL_KB * (size_t)s->mb);
            for (int j = 0; j < nb; j++) s->sig[kv_qjl_sig_off(s->mb, (int64_t)t, j0 + j)] = row[j];
        }
    return KV_OK;
}

/* planes: the value codes as kv_buf_put_arr of the packed rows would write them */
static void put_packed_rows(const qjl_state *s, kv_buf *b)
{
    uint8_t row[256]; /* dv / 4 <= 256 */
    kv_buf_put_i64(b, (int64_t)((size_t)s->n * s->vcb));
    for (int64_t t = 0; t < s->n; t++) {
        kv_qjl_planes_get(s->vq, s->ctx.dv, t, row);
        kv_buf_put(b, row, s->vcb);
    }
}

/* the sealed payload (methods/quant.h): h, known, the quantised rows, the
 * two rings (S is made again from the seed) */
static void qjl_payload(const void *state, kv_buf *b)
{
    const qjl_state *s = state;
    size_t n = (size_t)s->n, dv = (size_t)s->ctx.dv;
    kv_buf_put_i64(b, s->h);
    kv_buf_put_i64(b, s->known);
    put_sig_rows(s, b);
    kv_buf_put_arr(b, s->norm, n * sizeof(float));
    if (s->vbits == 32) kv_buf_put_arr(b, s->vf, n * dv * sizeof(float));
    else {
        if (s->planes) put_packed_rows(s, b);
        else kv_buf_put_arr(b, s->vq, n * s->vcb);
        kv_buf_put_arr(b, s->vzs, n * (size_t)s->nvg * 2 * sizeof(uint16_t));
    }
    kv_tokring_save(&s->tail, b);
    kv_tokring_save(&s->edge, b);
}

static void qjl_save(const void *state, kv_buf *out) { kv_qsave_sealed(out, qjl_payload, state); }

/* the next array of the payload, of exactly n elems, straight into dst */
static int rows_into(kv_rd *rd, void *dst, size_t elem, size_t n, kv_err *err)
{
    size_t c;
    if (kv_rd_arr_len(rd, elem, n, &c, err)) return err->code;
    if (c != n) return kv_seterr(err, KV_EINPUT, "checkpoint: qjl state has a bad row count, norm or value");
    return kv_rd_get(rd, dst, n * elem, err);
}

static int qjl_load(void *state, kv_rd *in, kv_err *err)
{
    qjl_state *s = state;
    kv_rd rd;
    int64_t h, known, lim = kv_shard_limit(&s->ctx);
    int nv = s->vbits == 32 ? 1 : 2;
    size_t dv = (size_t)s->ctx.dv, n = 0;
    if (kv_qload_sealed(in, &rd, err) || kv_rd_i64(&rd, &h, err) || kv_rd_i64(&rd, &known, err) ||
        kv_rd_arr_len(&rd, (size_t)s->mb, (size_t)lim, &n, err))
        return err->code;
    /* the rows are read into the state's own arrays, grown to the capacity
     * they had: no staging copy (s->n stays 0 until all is checked) */
    if (n && grow_rows(s, (int64_t)n, err)) return err->code;
    if (get_sig_rows(s, &rd, n, err) || rows_into(&rd, s->norm, sizeof(float), n, err) ||
        (nv == 1 ? rows_into(&rd, s->vf, sizeof(float) * dv, n, err)
                 : rows_into(&rd, s->vq, s->vcb, n, err) ||
                       rows_into(&rd, s->vzs, (size_t)s->nvg * 2 * sizeof(uint16_t), n, err)))
        return err->code;
    if (s->planes) kv_qjl_planes_from_rows(s->vq, s->ctx.dv, (int64_t)n);
    int bad = h < 0 || h > s->ctx.n_total || known < 0 || known > s->ctx.n_total || (int64_t)n > known;
    for (size_t i = 0; i < n && !bad; i++) bad = !isfinite(s->norm[i]) || s->norm[i] < 0;
    if (!bad && nv == 1) bad = !kv_all_finite(s->vf, n * dv);
    for (size_t i = 0; nv == 2 && i < n * (size_t)s->nvg && !bad; i++) bad = !kv_qparams_ok(s->vzs + 2 * i);
    if (bad) return kv_seterr(err, KV_EINPUT, "checkpoint: qjl state has a bad row count, norm or value");
    if (kv_qrings_load(&s->tail, &s->edge, &rd, h - s->R, known, (int64_t)n, lim, s->ctx.n_total, err))
        return err->code; /* the tail is the last R tokens */
    s->h = h;
    s->known = known;
    s->n = (int64_t)n;
    return KV_OK;
}

static int64_t qjl_max_bytes(const void *state)
{
    const qjl_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx);
    /* the rows, S, and (without a horizon) float tokens up to the whole shard in either ring */
    int64_t cap = cap_for(s, lim);
    return cap * (int64_t)(row_bytes(s) - (size_t)s->mb) + (int64_t)sig_bytes(s, cap) + 4 * (int64_t)s->m * s->ctx.d +
           2 * kv_tokring_max_bytes(s->ctx.d, s->ctx.dv, lim);
}

const kv_method_ops kv_method_qjl = {
    .name = "qjl",
    .kind = "quantisation",
    .summary = "QJL: m sign bits of a shared Gaussian projection plus the norm per key (unbiased <q,k>), values "
               "float or per-token quantised, last R tokens in float",
    .budget = "counted as packed: m bits + a float32 norm per key, the value as stored, float residual, S on every "
              "rank (budget=X: m, then vbits, from X)",
    .params = qjl_params,
    .cfg_size = sizeof(qjl_cfg),
    .check = qjl_check,
    .create = qjl_create,
    .horizon = qjl_horizon,
    .ingest = qjl_ingest,
    .partial = qjl_partial,
    .bytes = qjl_bytes,
    .extra = qjl_extra,
    .free = qjl_free,
    .save = qjl_save,
    .load = qjl_load,
    .max_bytes = qjl_max_bytes,
    .conform = { "m=16,residual=10;m=64,vbits=4,group=2,residual=0,seed=5;vbits=8", KV_PINV_ROUNDING },
    .cost = qjl_cost,
};
