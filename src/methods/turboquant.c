/* turboquant.c - turboquant:bits=<1..4>,mode=<mse|prod>,residual=<R>,seed=<n> |
 * turboquant:budget=<X>: TurboQuant (Zandieh, Daliri, Hadian, Mirrokni,
 * ICLR 2026; ALGORITHMS.md section 7b).
 *
 * Every key and value is stored as its norm and b-bit Lloyd-Max codes of
 * its rotated unit vector (methods/tqcodec.h): one Haar-random rotation per
 * stream for the keys and one for the values, keyed by (seed, stream),
 * never the rank, so a token's codes do not depend on who holds it.
 * mode=prod (keys only, as in the paper): b - 1 bits of codes plus the d
 * sign bits of the QJL sketch S r of the residual and |r|, an unbiased
 * inner product.  Queries are answered in the rotated domain: q is rotated
 * once (and S applied once, prod), each slice of tokens is decoded by
 * codebook lookup (no per-token rotation) and folded with the exact kernel
 * against [Pi q, S Pi q]; the value sum is accumulated rotated and rotated
 * back once per query.  A single query decodes nothing: its logits are
 * sums of entries of per-query lookup tables indexed by the codes, its
 * value sum per channel from the codes (methods/tqscan.h).  The rotations
 * are kept transposed (their columns contiguous: ingest rotates by outer
 * products, kv_tq_rotate).
 *
 * residual=R (default 0, as in the paper): at prefix p the tokens in
 * [p - R, p) are answered in float32 too, like kivi's window.  Every token
 * gets its codes at ingest; a float copy is kept only of the tokens some
 * query may still want in float (index >= h - R, h the driver's latest
 * horizon), and dropped after answering.  So the answer at p is a function
 * of the prefix, partial_batch is exact, and with R > 0 the float tokens
 * held are the union of the windows of one batch's query positions.
 *
 * The rows are held in blocks of 16, their bytes interleaved (tqscan.h:
 * kv_tq_byte_at) so that the kernels load 16 rows' code words at once
 * instead of gathering them (gathers are slow on some CPUs: about 200
 * cycles each on a GDS-mitigated Ice Lake); a checkpoint holds the rows
 * row-major, as before.
 *
 * Memory (bytes()): per token (rows for the whole shard, allocated at the
 * first ingest, rounded up to a whole block) the packed codes, float32 norms (and |r|, signs: prod); the
 * runs of ingested indices; the float tokens in 16-token pages; and the
 * rotations (d^2 + dv^2 floats, + d^2 for S), counted once per stream, on
 * rank 0: every rank holds a copy, but it is a function of the 8-byte seed
 * (a deployment makes it once per head).
 *
 * budget=X: the largest bits in 4..1 whose rows for n tokens (each rank's
 * in whole blocks of 16), the
 * rotations and R float tokens (kv_tokring_fit) fit in X; if none does,
 * bits = 1 with the largest residual that fits; else refused. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "kernels/slices.h"
#include "methods/method.h"
#include "methods/common/quant.h"
#include "methods/common/tokring.h"
#include "methods/common/tqcodec.h"
#include "methods/common/tqscan.h"

enum { TQ_MSE = 0, TQ_PROD = 1 };
#define TQ_SLICE 1024 /* tokens decoded per slice */

typedef struct { int64_t bits, mode, residual, seed; kv_budget budget; } tq_cfg;
KV_CFG_FITS(tq_cfg);

static const kv_param_def tq_params[] = {
    KV_PARAM_INT(tq_cfg, bits, 3, 1, 4, "bits per key and value coordinate (1..4), norms aside"),
    KV_PARAM_ENUM(tq_cfg, mode, "mse|prod", TQ_MSE, "mse: b-bit codes; prod: keys get b-1 bits plus a 1-bit QJL sketch of the residual (unbiased <q,k>)"),
    KV_PARAM_INT(tq_cfg, residual, 0, 0, INT64_C(1) << 40, "most recent tokens also answered in float32 (global)"),
    KV_PARAM_INT_DERIVED(tq_cfg, seed, -1, "--seed", 0, INT64_MAX, "rotation seed (the stream is mixed in, never the rank)"),
    KV_PARAM_BUDGET(tq_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of bits: bits (then residual) = what fits"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_turboquant;

static int tq_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    const tq_cfg *c = cfg;
    if (c->budget.kind && kv_spec_has(spec, "bits"))
        return kv_params_error(tq_params, spec, err, "give bits or budget, not both");
    return KV_OK;
}

typedef struct {
    kv_method_ctx ctx;
    int bits, prod, dq;        /* dq: the folded key width, d (mse) or 2d (prod) */
    int64_t R;
    kv_tq_book kb, vb;         /* key book (bits - prod bits), value book (bits) */
    kv_tq_book sgn;            /* prod: the sign bits as a 1-bit book {-1, +1} */
    float *Rk, *Rv, *S;        /* Pi_k^T (d x d), Pi_v^T (dv x dv), S (d x d, prod), row-major */
    size_t kcb, sb, vcb, row;  /* key code, sign and value code bytes; row bytes */
    int64_t h, known;          /* latest horizon or answered prefix; all tokens < known ingested */
    int64_t n, cap;            /* rows held, allocated */
    uint8_t *rows;             /* cap rows: |k|, |v|, [|r|], key codes, [signs], value codes, in blocks */
    size_t nrm;                /* norm bytes per row: 8, or 12 (prod) */
    int64_t nrun, runcap;      /* runs of consecutive ingested indices */
    int64_t *runs;             /* (first, length) pairs */
    kv_tokring tail;           /* float copies of the tokens >= h - R */
    /* query scratch (not state: grown, never shrunk, not counted) */
    float *qb;                 /* nq x dq rotated queries */
    float *tab;                /* one query's lookup tables: nlk key, then the signs' (tqscan.h) */
    int nlk;                   /* key tables */
    size_t *len;               /* nq rows per query, then nscr x nq per slice */
    double *ub;                /* dv */
    int qcap, nscr;
    float *scr;                /* nscr x TQ_SLICE x (dq + dv) decoded keys and values */
    kv_query_cost cost;        /* method.h: what the answers read and computed */
} tq_state;

static size_t row_bytes(int bits, int prod, int d, int dv, size_t *kcb, size_t *sb, size_t *vcb)
{
    size_t k = kv_tq_code_bytes(bits - prod, (size_t)d), s = prod ? kv_tq_code_bytes(1, (size_t)d) : 0,
           v = kv_tq_code_bytes(bits, (size_t)dv);
    if (kcb) *kcb = k, *sb = s, *vcb = v;
    return (prod ? 12 : 8) + k + s + v;
}

static int64_t rot_bytes(int prod, int d, int dv)
{
    return 4 * ((int64_t)d * d * (1 + prod) + (int64_t)dv * dv);
}

/* runs a rank holds at most (one per shard chunk, or every token when the chunk is unknown) */
static int64_t max_runs(const kv_method_ctx *ctx, int64_t lim)
{
    return ctx->chunk > 0 ? lim / ctx->chunk + 2 : lim + 1;
}

/* the most float tokens R that fit B over all ranks at bits (-1: none) */
static int64_t fit_residual(int64_t B, int bits, int prod, const kv_method_ctx *ctx)
{
    int64_t P = ctx->nranks > 0 ? ctx->nranks : 1;
    /* each rank's rows are whole blocks of KV_TQ_BLK: at most KV_TQ_BLK - 1 pad rows a rank */
    int64_t need = (ctx->n_total + (KV_TQ_BLK - 1) * P) * (int64_t)row_bytes(bits, prod, ctx->d, ctx->dv, NULL, NULL, NULL) +
                   rot_bytes(prod, ctx->d, ctx->dv) + 32 * (ctx->chunk > 0 ? ctx->n_total / ctx->chunk + 2 * P : 64 * P);
    if (B - need < 0) return -1;
    return kv_tokring_fit(B - need, ctx->d, ctx->dv, (int)P);
}

static void tq_free(void *state);

/* A = A^T (n x n): the rotations are kept transposed, their columns rows
 * (kv_tq_rotate's outer products at ingest and per query) */
static void transpose(float *A, int n)
{
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            float t = A[(size_t)i * n + j];
            A[(size_t)i * n + j] = A[(size_t)j * n + i];
            A[(size_t)j * n + i] = t;
        }
}

static int tq_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const tq_cfg *c = kv_method_cfg(&kv_method_turboquant, spec, err);
    if (!c) return err->code;
    if (ctx->semantics != KV_SEM_FULL)
        return kv_params_error(tq_params, spec, err, "turboquant answers full attention only (--semantics full)");
    int bits = (int)c->bits, prod = c->mode == TQ_PROD;
    int64_t R = c->residual;
    if (c->budget.kind) {
        int64_t B = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv);
        for (bits = 4; bits >= 1; bits--)
            if (fit_residual(B, bits, prod, ctx) >= R) break;
        if (bits < 1) {
            bits = 1;
            R = fit_residual(B, 1, prod, ctx);
            if (R < 0)
                return kv_params_error(tq_params, spec, err, "budget of %lld bytes does not hold 1-bit codes and "
                                       "norms of every token and the rotations", (long long)B);
        }
    }
    tq_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->bits = bits;
    s->prod = prod;
    s->dq = ctx->d * (1 + prod);
    s->R = R;
    s->row = row_bytes(bits, prod, ctx->d, ctx->dv, &s->kcb, &s->sb, &s->vcb);
    s->nrm = prod ? 12 : 8;
    kv_tokring_init(&s->tail, ctx->d, ctx->dv, kv_shard_limit(ctx));
    size_t dd = (size_t)ctx->d * (size_t)ctx->d, vv = (size_t)ctx->dv * (size_t)ctx->dv;
    s->Rk = kv_malloc(sizeof(float) * (dd * (1 + (size_t)prod) + vv), err);
    if (!s->Rk) {
        free(s);
        return err->code;
    }
    s->Rv = s->Rk + dd;
    s->S = prod ? s->Rv + vv : NULL;
    uint64_t seed = c->seed < 0 ? ctx->seed : (uint64_t)c->seed, st = (uint64_t)ctx->stream;
    if (kv_tq_book_make(&s->kb, ctx->d, bits - prod) || kv_tq_book_make(&s->vb, ctx->dv, bits) ||
        kv_tq_rotation(s->Rk, ctx->d, seed, 2 * st) || kv_tq_rotation(s->Rv, ctx->dv, seed, 2 * st + 1)) {
        tq_free(s);
        return kv_seterr(err, KV_EINTERNAL, "turboquant: out of memory making the codebooks and rotations");
    }
    transpose(s->Rk, ctx->d);
    transpose(s->Rv, ctx->dv);
    if (prod) kv_tq_gaussian(s->S, ctx->d, seed, st);
    s->sgn = (kv_tq_book){ .d = ctx->d, .bits = 1, .c = { -1.0f, 1.0f } };
    *out = s;
    return KV_OK;
}

/* capacity for need items: all when known (full >= need), else start doubled */
static int64_t cap_for(int64_t full, int64_t start, int64_t need)
{
    if (full > 0 && need <= full) return full;
    int64_t c = start;
    while (c < need) c *= 2;
    return c;
}

/* rows allocated for need rows: whole blocks */
static int64_t row_cap(const kv_method_ctx *ctx, int64_t need)
{
    int64_t c = cap_for(ctx->shard_tokens, 1024, need);
    return (c + KV_TQ_BLK - 1) / KV_TQ_BLK * KV_TQ_BLK;
}

/* row t's block and its lane */
static uint8_t *block_of(const tq_state *s, int64_t t, int *l)
{
    *l = (int)(t % KV_TQ_BLK);
    return s->rows + (size_t)(t / KV_TQ_BLK) * KV_TQ_BLK * s->row;
}

/* bytes [j0, j0 + n) of row t (row-major) to or from x */
static void row_copy(const tq_state *s, int64_t t, size_t j0, size_t n, uint8_t *x, int put)
{
    int l;
    uint8_t *b = block_of(s, t, &l);
    kv_tq_row_copy(b, s->nrm, l, j0, n, x, put);
}

/* norm f (0: |k|, 1: |v|, 2: |r|) of row t */
static float norm_at(const tq_state *s, int64_t t, int f)
{
    int l;
    const uint8_t *b = block_of(s, t, &l);
    float x;
    memcpy(&x, b + 64 * f + 4 * l, 4);
    return x;
}

static int grow_rows(tq_state *s, int64_t need, kv_err *err)
{
    if (need <= s->cap) return KV_OK;
    int64_t c = row_cap(&s->ctx, need);
    uint8_t *r = realloc(s->rows, (size_t)c * s->row);
    if (!r) return kv_seterr(err, KV_EINTERNAL, "turboquant: out of memory holding %lld tokens", (long long)c);
    memset(r + (size_t)s->cap * s->row, 0, (size_t)(c - s->cap) * s->row); /* the pad rows finite (zero) */
    s->rows = r;
    s->cap = c;
    return KV_OK;
}

static int grow_runs(tq_state *s, int64_t need, kv_err *err)
{
    if (need <= s->runcap) return KV_OK;
    int64_t c = cap_for(0, 16, need);
    int64_t *r = realloc(s->runs, sizeof(int64_t) * 2 * (size_t)c);
    if (!r) return kv_seterr(err, KV_EINTERNAL, "turboquant: out of memory");
    s->runs = r;
    s->runcap = c;
    return KV_OK;
}

static float row_f(const uint8_t *r, int i)
{
    float f;
    memcpy(&f, r + 4 * i, 4);
    return f;
}

/* Encode token g (k, v), rotated rk = Pi_k k and rv = Pi_v v, into row n;
 * y and r: scratch of max(d, dv) floats, row: of s->row bytes. */
static void encode(tq_state *s, const float *k, const float *v, const float *rk, const float *rv, float *y, float *r,
                   uint8_t *row)
{
    uint8_t *kc = row + s->nrm, *sg = kc + s->kcb, *vc = sg + s->sb;
    memset(row, 0, s->row);
    float kn = kv_tq_encode_rotated(&s->kb, k, rk, y, kc), vn;
    memcpy(row, &kn, 4);
    if (s->prod) {
        float g = kv_tq_residual(&s->kb, s->S, y, kc, r, sg);
        memcpy(row + 8, &g, 4);
    }
    vn = kv_tq_encode_rotated(&s->vb, v, rv, y, vc);
    memcpy(row + 4, &vn, 4);
    row_copy(s, s->n, 0, s->row, row, 1);
}

static void tq_horizon(void *state, int64_t p)
{
    tq_state *s = state;
    if (p > s->h) s->h = p; /* no drop here: a batch still answers its earlier prefixes */
}

static int tq_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    tq_state *s = state;
    int d = s->ctx.d, dv = s->ctx.dv, m = d > dv ? d : dv;
    if (!n) return KV_OK;
    if (grow_rows(s, s->n + (int64_t)n, err)) return err->code;
    int64_t *last = s->nrun ? s->runs + 2 * (s->nrun - 1) : NULL;
    if (last && last[0] + last[1] == first) last[1] += (int64_t)n;
    else {
        if (grow_runs(s, s->nrun + 1, err)) return err->code;
        s->runs[2 * s->nrun] = first;
        s->runs[2 * s->nrun + 1] = (int64_t)n;
        s->nrun++;
    }
    float *y = malloc(sizeof(float) * (2 * (size_t)m + KV_DOT_BLK * (size_t)(d + dv)) + s->row);
    if (!y) return kv_seterr(err, KV_EINTERNAL, "turboquant: out of memory");
    float *rk = y + 2 * m, *rv = rk + KV_DOT_BLK * d;
    uint8_t *row = (uint8_t *)(rv + KV_DOT_BLK * dv);
    for (size_t i = 0; i < n && !err->code; i++) {
        size_t b = i % KV_DOT_BLK;
        if (!b) { /* the rotations of a block of tokens at once (a column of Pi loaded once) */
            int nt = n - i < KV_DOT_BLK ? (int)(n - i) : KV_DOT_BLK;
            kv_tq_rotate(s->Rk, d, K + i * d, nt, rk);
            kv_tq_rotate(s->Rv, dv, V + i * dv, nt, rv);
        }
        int64_t g = first + (int64_t)i;
        encode(s, K + i * d, V + i * dv, rk + b * d, rv + b * dv, y, y + m, row);
        s->n++;
        if (s->R > 0 && g >= s->h - s->R) kv_tokring_push(&s->tail, K + i * d, V + i * dv, g, err);
    }
    free(y);
    if (first + (int64_t)n > s->known) s->known = first + (int64_t)n;
    return err->code;
}

/* rows of tokens with index < x */
static int64_t rows_below(const tq_state *s, int64_t x)
{
    int64_t c = 0;
    for (int64_t i = 0; i < s->nrun; i++) {
        int64_t f = s->runs[2 * i], l = s->runs[2 * i + 1];
        c += x <= f ? 0 : x - f < l ? x - f : l;
    }
    return c;
}

typedef struct { tq_state *s; int64_t per; int nq; } slice_arg;

#define TQ_TILE KV_TQ_SCAN_MAX /* one query: rows per tile (logits, exponentials, value sums) */

/* scratch floats per thread: a decoded slice and a block's rows (fold_slice) or a tile's logits, signs' dots and value sum (fold_one) */
static size_t scr_per(const tq_state *s)
{
    size_t a = (size_t)TQ_SLICE * (size_t)(s->dq + s->ctx.dv) + KV_TQ_BLK * (s->row + 3) / 4, b = 2 * (size_t)TQ_TILE + (size_t)s->ctx.dv;
    return a > b ? a : b;
}

static int fold_slice(const void *arg, int64_t i, const float *Q, int nq, float scale, double *st)
{
    const slice_arg *a = arg;
    tq_state *s = a->s;
    int d = s->ctx.d, dv = s->ctx.dv, dq = s->dq, tid = omp_get_thread_num();
    int64_t t0 = i * a->per, t1 = t0 + a->per < s->n ? t0 + a->per : s->n;
    size_t per = (size_t)TQ_SLICE * (size_t)(dq + dv) + KV_TQ_BLK * (s->row + 3) / 4;
    float *K = tid < s->nscr ? s->scr + (size_t)tid * scr_per(s) : malloc(sizeof(float) * per + sizeof(size_t) * nq);
    if (!K) return KV_EINTERNAL;
    float *V = K + (size_t)TQ_SLICE * dq;
    uint8_t *blk = (uint8_t *)(V + (size_t)TQ_SLICE * dv); /* a block's rows, row-major */
    size_t *len = tid < s->nscr ? s->len + (size_t)(tid + 1) * a->nq : (size_t *)(K + per);
    const float coef = (float)(sqrt(M_PI / 2) / d);
    int rc = KV_OK;
    /* the slice a block of TQ_SLICE rows at a time (the decode scratch) */
    for (int64_t b0 = t0; b0 < t1 && rc == KV_OK; b0 += TQ_SLICE) {
        int64_t b1 = b0 + TQ_SLICE < t1 ? b0 + TQ_SLICE : t1;
        if ((int64_t)s->len[nq - 1] <= b0) break; /* no query reaches it */
        for (int64_t t = b0; t < b1; t++) {
            int l;
            const uint8_t *b = block_of(s, t, &l), *row = blk + (size_t)l * s->row, *kc = row + s->nrm;
            if (l == 0 || t == b0) kv_tq_block_rows(b, s->row, s->nrm, KV_TQ_BLK, blk);
            float *k = K + (size_t)(t - b0) * dq, kn = row_f(row, 0);
            kv_tq_decode(&s->kb, kc, kn, k);
            if (s->prod) kv_tq_signs(kc + s->kcb, d, coef * kn * row_f(row, 2), k + d);
            kv_tq_decode(&s->vb, kc + s->kcb + s->sb, row_f(row, 1), V + (size_t)(t - b0) * dv);
        }
        for (int q = 0; q < nq; q++) { /* each query's rows within the block (non-decreasing) */
            int64_t r = (int64_t)s->len[q] - b0;
            len[q] = r <= 0 ? 0 : (size_t)(r < b1 - b0 ? r : b1 - b0);
        }
        rc = kv_attn_fold_multi(Q, nq, len, K, V, dq, dv, scale, st);
    }
    if (tid >= s->nscr) free(K);
    return rc;
}

/* One query in the compressed domain (no decoded rows, methods/tqscan.h):
 * per tile of rows the logits scale |k| (<q', c[codes]> [+ coef |r| <S q',
 * signs>]) from the codes by the query's lookup tables, the shifted
 * exponentials in float, and their value sum sum_t p_t |v_t| c[value
 * codes] (float per tile, double across tiles). */
static int fold_one(const void *arg, int64_t i, const float *Q, int nq, float scale, double *st)
{
    const slice_arg *a = arg;
    tq_state *s = a->s;
    (void)nq, (void)Q;
    int d = s->ctx.d, dv = s->ctx.dv, tid = omp_get_thread_num();
    int64_t t0 = i * a->per, t1 = t0 + a->per < (int64_t)s->len[0] ? t0 + a->per : (int64_t)s->len[0];
    size_t per = (size_t)2 * TQ_TILE + (size_t)dv;
    float *lg = tid < s->nscr ? s->scr + (size_t)tid * scr_per(s) : malloc(sizeof(float) * per);
    if (!lg) return KV_EINTERNAL;
    float *sg = lg + TQ_TILE, *U = sg + TQ_TILE;
    const float coef = (float)(sqrt(M_PI / 2) / d);
    const size_t off = 16 * s->nrm, bs = KV_TQ_BLK * s->row; /* a block's key codes; its bytes */
    for (int64_t b0 = t0; b0 < t1; b0 += TQ_TILE) { /* b0: a whole block (the slices and tiles are) */
        int nt = (int)(t1 - b0 < TQ_TILE ? t1 - b0 : TQ_TILE), l;
        const uint8_t *r0 = block_of(s, b0, &l);
        kv_tq_scan_dots(&s->kb, s->tab, r0 + off, s->kcb, bs, nt, lg);
        if (s->prod) kv_tq_scan_dots(&s->sgn, s->tab + 16 * (size_t)s->nlk, r0 + off + 16 * s->kcb, s->sb, bs, nt, sg);
        kv_tq_scan_weights(r0, bs, nt, s->prod, coef, scale, lg, sg, st, dv);
        memset(U, 0, sizeof(float) * (size_t)dv);
        kv_tq_scan_axpys(&s->vb, r0 + off + 16 * (s->kcb + s->sb), s->vcb, bs, nt, lg, U);
        for (int c = 0; c < dv; c++) st[KV_PS_U + c] += U[c];
    }
    if (tid >= s->nscr) free(lg);
    return KV_OK;
}

/* Query scratch for nq queries (grown only). */
static int scratch(tq_state *s, int nq)
{
    if (!s->scr) {
        s->nscr = omp_get_max_threads();
        s->scr = malloc(sizeof(float) * (size_t)s->nscr * scr_per(s));
        s->ub = malloc(sizeof(double) * (size_t)s->ctx.dv);
        s->tab = malloc(sizeof(float) * 16 * 2 * (size_t)s->ctx.d);
        if (!s->scr || !s->ub || !s->tab) return KV_EINTERNAL;
    }
    if (nq <= s->qcap) return KV_OK;
    float *qb = realloc(s->qb, sizeof(float) * (size_t)nq * (size_t)s->dq);
    if (qb) s->qb = qb;
    size_t *len = qb ? realloc(s->len, sizeof(size_t) * (size_t)nq * (size_t)(s->nscr + 1)) : NULL;
    if (len) s->len = len;
    if (!qb || !len) return KV_EINTERNAL;
    s->qcap = nq;
    return KV_OK;
}

/* method.h: cost.  Per call the nr rows are decoded once (codes, the runs
 * scanned); per query the rotations are read and applied (2 d^2, + 2 d^2
 * for S, + 2 dv^2 back), its rows folded (2 (dq + dv) flops each) and its
 * float window read and folded. */
static void count(tq_state *s, int nq, const int64_t *p, int64_t p0, int64_t nr)
{
    int d = s->ctx.d, dv = s->ctx.dv, dq = s->dq;
    double tail = 0, rows = 0;
    for (int q = 0; q < nq; q++) {
        int64_t pq = p ? p[q] : p0, t = kv_tokring_lower(&s->tail, pq - s->R), e = t;
        while (e < s->tail.count && kv_tokring_idx(&s->tail, e) < pq) e++;
        tail += (double)(e - t);
        rows += (double)s->len[q];
    }
    s->cost.read_tokens += (double)nr + tail;
    s->cost.read_bytes += (double)nr * (double)s->row + 16.0 * (double)s->nrun + tail * 4.0 * (d + dv) +
                          (double)nq * (double)rot_bytes(s->prod, d, dv);
    s->cost.flops += (double)nr * (dq + dv) + rows * 2.0 * (dq + dv) + tail * 2.0 * (d + dv) +
                     (double)nq * 2.0 * ((double)d * dq + (double)dv * dv);
}

static void tq_cost(const void *state, kv_query_cost *c) { *c = ((const tq_state *)state)->cost; }

/* nq queries at prefixes p[q] (or all at p0 when p is NULL). */
static int answer(tq_state *s, const float *Q, int nq, const int64_t *p, int64_t p0, double *st)
{
    int d = s->ctx.d, dv = s->ctx.dv, dq = s->dq;
    size_t sl = KV_PSTATE_LEN(dv);
    float scale = (float)s->ctx.scale;
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    int64_t plast = nq > 0 && p ? p[nq - 1] : p0;
    if (plast > s->h) s->h = plast;
    if (plast > s->known) s->known = plast;
    if (nq <= 0) {
        kv_tokring_drop_below(&s->tail, plast - s->R);
        return KV_OK;
    }
    if (scratch(s, nq)) return KV_EINTERNAL;
    for (int q = 0; q < nq; q++) { /* rotate once per query: [Pi q, S Pi q] */
        const float *x = Q + (size_t)q * d;
        float *y = s->qb + (size_t)q * dq;
        kv_tq_rotate(s->Rk, d, x, 1, y);
        for (int i = 0; s->prod && i < d; i++) y[d + i] = kv_dot_fixed(s->S + (size_t)i * d, y, d);
        s->len[q] = (size_t)rows_below(s, (p ? p[q] : p0) - s->R);
    }
    if (nq == 1) { /* the lookup tables of [Pi q, S Pi q] (tqscan.h), once per query */
        s->nlk = s->kb.bits ? kv_tq_tables(&s->kb, s->qb, s->tab) : 0;
        if (s->prod) kv_tq_tables(&s->sgn, s->qb + d, s->tab + 16 * (size_t)s->nlk);
    }
    int64_t nr = (int64_t)s->len[nq - 1];
    slice_arg a = { s, kv_slice_len(nr, TQ_SLICE, nq), nq };
    int rc = kv_fold_slices((nr + a.per - 1) / a.per, nq == 1 ? fold_one : fold_slice, &a, s->qb, nq, dv, scale, st);
    for (int q = 0; q < nq && !rc; q++) { /* the value sum back from the rotated domain, once per query */
        double *u = st + q * sl + KV_PS_U;
        kv_tq_rotate_back(s->Rv, dv, u, s->ub);
        memcpy(u, s->ub, sizeof(double) * (size_t)dv);
    }
    for (int q = 0; q < nq && !rc; q++) { /* the float window [p - R, p) */
        int64_t pq = p ? p[q] : p0;
        for (int64_t t = kv_tokring_lower(&s->tail, pq - s->R); t < s->tail.count; t++) {
            if (kv_tokring_idx(&s->tail, t) >= pq) break;
            const float *k = kv_tokring_k(&s->tail, t), *x = Q + (size_t)q * d;
            double dot = 0;
            for (int j = 0; j < d; j++) dot += (double)x[j] * k[j];
            kv_partial_add_one(st + q * sl, dv, (double)scale * dot, 1.0, kv_tokring_v(&s->tail, t));
        }
    }
    count(s, nq, p, p0, nr);
    kv_tokring_drop_below(&s->tail, plast - s->R);
    return rc;
}

static int tq_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    return answer(state, Q, nq, NULL, p, st);
}

static int tq_partial_batch(void *state, const float *Q, const int64_t *p, int nq, double *st)
{
    return answer(state, Q, nq, p, 0, st);
}

static size_t tq_bytes(const void *state)
{
    const tq_state *s = state;
    return (size_t)s->cap * s->row + sizeof(int64_t) * 2 * (size_t)s->runcap + kv_tokring_bytes(&s->tail) +
           (s->ctx.rank == 0 ? (size_t)rot_bytes(s->prod, s->ctx.d, s->ctx.dv) : 0);
}

static void tq_extra(const void *state, kv_method_extra *x)
{
    const tq_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->n;
}

static void tq_free(void *state)
{
    tq_state *s = state;
    if (!s) return;
    free(s->Rk);
    free(s->rows);
    free(s->runs);
    free(s->qb);
    free(s->len);
    free(s->ub);
    free(s->tab);
    free(s->scr);
    kv_tokring_free(&s->tail);
    free(s);
}

/* the sealed payload (methods/quant.h): h, known, the runs, the rows, the
 * float tail (rotations and books are made again from the spec and seed) */
static void tq_payload(const void *state, kv_buf *b)
{
    const tq_state *s = state;
    kv_buf_put_i64(b, s->h);
    kv_buf_put_i64(b, s->known);
    kv_buf_put_arr(b, s->runs, sizeof(int64_t) * 2 * (size_t)s->nrun);
    kv_buf_put_i64(b, (int64_t)(s->row * (size_t)s->n)); /* kv_buf_put_arr's length, then the rows row-major */
    uint8_t x[256];
    for (int64_t t = 0; t < s->n; t++)
        for (size_t j = 0; j < s->row; j += sizeof x) {
            size_t m = s->row - j < sizeof x ? s->row - j : sizeof x;
            row_copy(s, t, j, m, x, 0);
            kv_buf_put(b, x, m);
        }
    kv_tokring_save(&s->tail, b);
}

static void tq_save(const void *state, kv_buf *out) { kv_qsave_sealed(out, tq_payload, state); }

static int tq_load(void *state, kv_rd *in, kv_err *err)
{
    tq_state *s = state;
    kv_rd rd;
    int64_t h, known, lim = kv_shard_limit(&s->ctx), tot = 0, end = 0;
    void *rv = NULL;
    size_t nrun = 0, n = 0;
    if (kv_qload_sealed(in, &rd, err) || kv_rd_i64(&rd, &h, err) || kv_rd_i64(&rd, &known, err) ||
        kv_rd_arr(&rd, &rv, 2 * sizeof(int64_t), (size_t)max_runs(&s->ctx, lim), &nrun, err))
        goto fail;
    const int64_t *r = rv;
    int bad = h < 0 || h > s->ctx.n_total || known < 0 || known > s->ctx.n_total;
    for (size_t i = 0; i < nrun && !bad; i++) {
        bad = r[2 * i] < end + (i > 0) || r[2 * i + 1] < 1 || r[2 * i + 1] > known - r[2 * i];
        end = r[2 * i] + r[2 * i + 1];
        tot += r[2 * i + 1];
    }
    if (bad || tot > lim || kv_rd_arr_len(&rd, s->row, (size_t)lim, &n, err) || (int64_t)n != tot) {
        if (!err->code) kv_seterr(err, KV_EINPUT, "checkpoint: turboquant state has bad runs or rows");
        goto fail;
    }
    /* rows straight into the state's array, grown to the capacity it had (s->n stays 0 until checked) */
    if ((n && grow_rows(s, (int64_t)n, err)) || (nrun && grow_runs(s, (int64_t)nrun, err)))
        goto fail;
    uint8_t x[256];
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < s->row; j += sizeof x) {
            size_t m = s->row - j < sizeof x ? s->row - j : sizeof x;
            if (kv_rd_get(&rd, x, m, err)) goto fail;
            row_copy(s, (int64_t)i, j, m, x, 1);
        }
    for (size_t i = 0; i < n && !bad; i++)
        for (int f = 0; f < (s->prod ? 3 : 2) && !bad; f++) {
            float y = norm_at(s, (int64_t)i, f);
            bad = !isfinite(y) || y < 0;
        }
    if (bad) {
        kv_seterr(err, KV_EINPUT, "checkpoint: turboquant state has a bad norm");
        goto fail;
    }
    if (kv_tokring_load(&s->tail, &rd, lim, s->ctx.n_total, err)) goto fail;
    if ((s->tail.count && kv_tokring_idx(&s->tail, s->tail.count - 1) >= known) || s->tail.count > (int64_t)n ||
        rd.pos != rd.len) {
        kv_tokring_free(&s->tail);
        kv_tokring_init(&s->tail, s->ctx.d, s->ctx.dv, lim);
        kv_seterr(err, KV_EINPUT, "checkpoint: turboquant state has a bad float tail");
        goto fail;
    }
    if (nrun) memcpy(s->runs, r, sizeof(int64_t) * 2 * nrun);
    s->nrun = (int64_t)nrun;
    s->h = h;
    s->known = known;
    s->n = (int64_t)n;
    free(rv);
    return KV_OK;
fail:
    free(rv);
    return err->code;
}

static int64_t tq_max_bytes(const void *state)
{
    const tq_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx);
    return row_cap(&s->ctx, lim) * (int64_t)s->row +
           16 * cap_for(0, 16, max_runs(&s->ctx, lim)) + kv_tokring_max_bytes(s->ctx.d, s->ctx.dv, lim) +
           rot_bytes(s->prod, s->ctx.d, s->ctx.dv);
}

const kv_method_ops kv_method_turboquant = {
    .name = "turboquant",
    .kind = "quantisation",
    .summary = "TurboQuant: random rotation, Lloyd-Max codes per coordinate plus the norm (prod: + 1-bit QJL of "
               "the key residual, unbiased <q,k>), answered in the rotated domain",
    .budget = "counted as packed: b bits per coordinate plus float32 norms per token, the rotations once per "
              "stream, float window (budget=X: bits, then residual, from X)",
    .params = tq_params,
    .cfg_size = sizeof(tq_cfg),
    .check = tq_check,
    .create = tq_create,
    .horizon = tq_horizon,
    .ingest = tq_ingest,
    .partial = tq_partial,
    .partial_batch = tq_partial_batch,
    .bytes = tq_bytes,
    .extra = tq_extra,
    .free = tq_free,
    .save = tq_save,
    .load = tq_load,
    .max_bytes = tq_max_bytes,
    .cost = tq_cost,
    .conform = { "bits=3;bits=2,mode=prod,residual=25,seed=4;bits=4,residual=300", KV_PINV_ROUNDING },
};
