/* snapkv.c - snapkv:tokens=<B>|budget=<X>[,window=<w>,period=<T>,kernel=<k>]:
 * SnapKV (Li et al. 2024, "SnapKV: LLM Knows What You are Looking for
 * Before Generation") adapted to decoding, ALGORITHMS.md section 4c.
 *
 * SnapKV compresses a prompt once: the last `window` queries of the prompt
 * (the observation window) vote for the earlier tokens by their attention,
 * the votes are max-pooled over `kernel` neighbouring positions (so a kept
 * token brings its neighbours), and the top tokens are kept with the window
 * itself.  Here the stream never ends, so the vote is repeated:
 *
 *   - the last `window` queries answered are buffered (row, prefix, and the
 *     merged global (m, l) the feedback hook gives every rank);
 *   - whenever a rank's held tokens reach its share of B, it compresses to
 *     its share minus its part of `period` (floor(period * share / B), at
 *     most half the share, at least 1), so that at one rank a compression
 *     comes every `period` tokens (capped at B/2);
 *   - a token's vote is its mean global attention weight exp(a - m) / l
 *     over the buffered queries that see it (prefix > index; the mean, not
 *     SnapKV's sum, because in a stream older tokens are seen by more of the
 *     buffered queries); the pooled score is the largest vote among the
 *     rank's held tokens within kernel/2 positions of it (index distance);
 *   - tokens no buffered query has seen (those after the last query, the
 *     stream's equivalent of the observation window) are kept first, newest
 *     first, then the highest pooled scores, ties to the newer token.
 *
 * Global budget: the rank shares of B follow h2o's rule (a rank's share
 * fixed at each horizon as floor(seen * B / p') by the tokens it has seen
 * of the prefix p' reached; before any token, by shard size), so the held
 * tokens summed over ranks never exceed B.  Each rank compresses on its own
 * schedule and pools only over its own tokens (neighbours on another rank
 * do not count): close to, not equal to, P = 1.  B >= n: nothing is ever
 * dropped, the answers are exact attention.  budget=X: B = floor((bytes(X)
 * - P window q) / slot), q = one buffered query (d floats, prefix, m, l),
 * slot the per-token bytes below.
 *
 * Memory: allocated slots x ((d + dv) floats + index + vote + pooled score
 * + int32 order) + window buffered queries; the slot arrays are resized to
 * the slots in use after every horizon and ingest (up to the share within
 * an ingest). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/held.h"
#include "methods/method.h"
#include "methods/slots.h"

typedef struct {
    int64_t tokens, window, period, kernel;
    kv_budget budget;
} snapkv_cfg;
KV_CFG_FITS(snapkv_cfg);

typedef struct {
    kv_method_ctx ctx;
    int64_t B, W, T, kern; /* global tokens, buffered queries, period, pooling kernel */
    int64_t share;         /* this rank's slots now */
    int64_t hlast, seen;   /* last horizon; tokens ingested */
    kv_query_cost cost;   /* method.h: cost */
    kv_slots sl;           /* held in ascending index; scratch: vote, pooled score, order (SCRATCH) */
    int64_t nbuf, head;    /* buffered queries, next ring slot */
    float *bq;             /* W x d query rows */
    int64_t *bp;           /* their prefixes */
    double *bml;           /* their merged (m, l) */
} snapkv_state;

static const kv_param_def snapkv_params[] = {
    KV_PARAM_INT(snapkv_cfg, tokens, 1024, 1, INT32_MAX, "tokens held over all ranks together (peak)"),
    KV_PARAM_INT(snapkv_cfg, window, 16, 1, 4096, "queries whose attention votes (the observation window)"),
    KV_PARAM_INT(snapkv_cfg, period, 64, 1, INT32_MAX, "tokens between compressions (capped at tokens/2)"),
    KV_PARAM_INT(snapkv_cfg, kernel, 7, 1, 1023, "max-pooling width over neighbouring positions (odd)"),
    KV_PARAM_BUDGET(snapkv_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_TABLE_END
};

/* compression scratch per slot: its vote and pooled score, then its place in the order */
#define SCRATCH (2 * sizeof(double) + sizeof(int32_t))

static int64_t slot_bytes(int d, int dv)
{
    return kv_slots_row_bytes(d, dv, 0, SCRATCH);
}

static int64_t query_bytes(int d)
{
    return (int64_t)d * (int64_t)sizeof(float) + (int64_t)sizeof(int64_t) + 2 * (int64_t)sizeof(double);
}

static int snapkv_cfg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    snapkv_cfg *c = cfg;
    if (c->budget.kind != KV_BUDGET_NONE && kv_spec_has(spec, "tokens"))
        return kv_params_error(snapkv_params, spec, err, "give tokens= or budget=, not both");
    if (c->kernel % 2 == 0)
        return kv_params_error(snapkv_params, spec, err, "kernel=%lld must be odd (centred on the token)",
                               (long long)c->kernel);
    return KV_OK;
}

extern const kv_method_ops kv_method_snapkv;

static void snapkv_free(void *state);

static int snapkv_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const snapkv_cfg *c = kv_method_cfg(&kv_method_snapkv, spec, err);
    if (!c) return err->code;
    int64_t B = c->tokens;
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes(ctx->d, ctx->dv), bytes = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv);
        int64_t rest = bytes - (int64_t)(ctx->nranks > 0 ? ctx->nranks : 1) * c->window * query_bytes(ctx->d);
        B = rest > 0 ? rest / per : 0;
        if (B < 1)
            return kv_params_error(snapkv_params, spec, err,
                                   "budget of %lld bytes holds no token (one takes %lld, plus %lld per rank for "
                                   "the %lld buffered queries)",
                                   (long long)bytes, (long long)per, (long long)(c->window * query_bytes(ctx->d)),
                                   (long long)c->window);
        if (B > INT32_MAX)
            return kv_params_error(snapkv_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
    }
    snapkv_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->B = B;
    s->W = c->window;
    s->T = c->period < B / 2 ? c->period : (B / 2 > 1 ? B / 2 : 1);
    s->kern = c->kernel;
    s->share = B >= ctx->n_total ? B : kv_slots_first_share(ctx, B);
    kv_slots_init(&s->sl, ctx->d, ctx->dv, 0, SCRATCH);
    s->bq = kv_calloc((size_t)(s->W * ctx->d), sizeof(float), err);
    s->bp = s->bq ? kv_calloc((size_t)s->W, sizeof(int64_t), err) : NULL;
    s->bml = s->bp ? kv_calloc((size_t)(2 * s->W), sizeof(double), err) : NULL;
    if (!s->bml) {
        snapkv_free(s);
        return err->code;
    }
    *out = s;
    return KV_OK;
}

/* slot a is kept before slot b: higher pooled score, then newer */
static int keep_first(const double *pooled, const int64_t *idx, int32_t a, int32_t b)
{
    if (pooled[a] != pooled[b]) return pooled[a] > pooled[b];
    return idx[a] > idx[b];
}

/* heapsort of order[0..n), best (keep_first) first: a max-heap whose root
 * is the worst goes to the end (a total order: indices differ) */
static void sift(const double *pooled, const int64_t *idx, int32_t *o, int64_t i, int64_t n)
{
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && keep_first(pooled, idx, o[c], o[c + 1])) c++;
        if (!keep_first(pooled, idx, o[i], o[c])) return;
        int32_t t = o[i]; o[i] = o[c]; o[c] = t;
        i = c;
    }
}

static void sort_order(const double *pooled, const int64_t *idx, int32_t *o, int64_t n)
{
    for (int64_t i = n / 2 - 1; i >= 0; i--) sift(pooled, idx, o, i, n);
    for (int64_t end = n - 1; end >= 1; end--) {
        int32_t t = o[0]; o[0] = o[end]; o[end] = t;
        sift(pooled, idx, o, 0, end);
    }
}

/* Keep the best `keep` held tokens (see the header), in index order. */
static void compress(snapkv_state *s, int64_t keep)
{
    kv_slots *sl = &s->sl;
    int64_t n = sl->held, *idx = sl->idx;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (keep < 0) keep = 0;
    if (n <= keep) return;
    /* the scratch of cap slots: cap votes, cap pooled scores, cap order entries */
    double *vote = sl->scratch, *pooled = vote + sl->cap;
    int32_t *order = (int32_t *)(pooled + sl->cap);
    for (int64_t t = 0; t < n; t++) {
        double sum = 0;
        int64_t cnt = 0;
        for (int64_t j = 0; j < s->nbuf; j++) {
            if (s->bp[j] <= idx[t]) continue; /* that query did not see the token */
            double m = s->bml[2 * j], l = s->bml[2 * j + 1];
            if (l > 0)
                sum += exp(kv_held_logit(s->bq + (size_t)j * d, sl->K + (size_t)t * d, s->ctx.d, s->ctx.scale) - m) / l;
            cnt++;
        }
        vote[t] = cnt ? sum / (double)cnt : INFINITY; /* unseen: kept first */
    }
    int64_t half = s->kern / 2;
    for (int64_t t = 0; t < n; t++) {
        double best = vote[t];
        for (int64_t j = t - 1; j >= 0 && idx[t] - idx[j] <= half; j--)
            if (isfinite(vote[j]) && vote[j] > best) best = vote[j];
        for (int64_t j = t + 1; j < n && idx[j] - idx[t] <= half; j++)
            if (isfinite(vote[j]) && vote[j] > best) best = vote[j];
        pooled[t] = best;
        order[t] = (int32_t)t;
    }
    sort_order(pooled, idx, order, n);
    /* mark the kept slots (vote = -1), then compact in index order */
    for (int64_t i = 0; i < keep; i++) vote[order[i]] = -1;
    int64_t w = 0;
    for (int64_t t = 0; t < n; t++) {
        if (vote[t] != -1) continue;
        if (w != t) {
            memmove(sl->K + (size_t)w * d, sl->K + (size_t)t * d, sizeof(float) * d);
            memmove(sl->V + (size_t)w * dv, sl->V + (size_t)t * dv, sizeof(float) * dv);
            idx[w] = idx[t];
        }
        w++;
    }
    sl->held = w;
}

/* what a compression keeps at share sh: sh minus this rank's part of the period */
static int64_t target(const snapkv_state *s, int64_t sh)
{
    int64_t slack = (int64_t)((__int128)s->T * sh / s->B);
    if (slack > sh / 2) slack = sh / 2;
    if (slack < 1) slack = 1;
    return sh - slack;
}

static void snapkv_horizon(void *state, int64_t p)
{
    snapkv_state *s = state;
    if (p < s->hlast) return;
    if (s->hlast > 0 && s->B < s->ctx.n_total) s->share = (int64_t)((__int128)s->seen * s->B / s->hlast);
    s->hlast = p;
    if (s->sl.held > s->share) compress(s, target(s, s->share));
    kv_slots_resize(&s->sl, s->sl.held);
}

static int snapkv_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    snapkv_state *s = state;
    kv_slots *sl = &s->sl;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    if (kv_slots_make_room(sl, n, s->share, "snapkv", err)) return err->code;
    for (size_t i = 0; i < n; i++) {
        if (sl->held >= s->share) compress(s, target(s, s->share));
        if (sl->held >= s->share) continue; /* a share of 0: nothing fits */
        kv_slots_set(sl, (int32_t)sl->held++, K + i * d, V + i * dv, first + (int64_t)i, 0.0);
    }
    s->seen += (int64_t)n;
    kv_slots_resize(sl, sl->held);
    return KV_OK;
}

static int snapkv_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    snapkv_state *s = state;
    (void)p; /* every held token is < p */
    kv_slots_cost(&s->sl, nq, &s->cost);
    return kv_attn_held(Q, nq, s->sl.K, s->sl.V, (size_t)s->sl.held, s->ctx.d, s->ctx.dv, s->ctx.scale, st);
}

/* buffer the call's queries with their global (m, l) (the last W of them) */
static int snapkv_feedback(void *state, const float *Q, int nq, int64_t p, const double *ml)
{
    snapkv_state *s = state;
    size_t d = (size_t)s->ctx.d;
    for (int q = nq > s->W ? nq - (int)s->W : 0; q < nq; q++) {
        memcpy(s->bq + (size_t)s->head * d, Q + (size_t)q * d, sizeof(float) * d);
        s->bp[s->head] = p;
        s->bml[2 * s->head] = ml[2 * q];
        s->bml[2 * s->head + 1] = ml[2 * q + 1];
        s->head = (s->head + 1) % s->W;
        if (s->nbuf < s->W) s->nbuf++;
    }
    return KV_OK;
}

static size_t snapkv_bytes(const void *state)
{
    const snapkv_state *s = state;
    return kv_slots_bytes(&s->sl) + (size_t)(s->W * query_bytes(s->ctx.d));
}

static void snapkv_cost(const void *state, kv_query_cost *c)
{
    *c = ((const snapkv_state *)state)->cost;
}

static void snapkv_extra(const void *state, kv_method_extra *x)
{
    const snapkv_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->sl.held;
}

static void snapkv_free(void *state)
{
    snapkv_state *s = state;
    if (!s) return;
    kv_slots_free(&s->sl);
    free(s->bq); free(s->bp); free(s->bml);
    free(s);
}

/* Counters, the filled query ring slots as laid out, the held tokens (index order).
 * vote, pooled and order are scratch of each compression. */
static void snapkv_save(const void *state, kv_buf *out)
{
    const snapkv_state *s = state;
    kv_buf_put_i64(out, s->share);
    kv_buf_put_i64(out, s->hlast);
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_i64(out, s->nbuf);
    kv_buf_put_i64(out, s->head);
    /* the filled ring slots only: 0..nbuf-1 (head == nbuf until it wraps) */
    kv_buf_put_arr(out, s->bq, (size_t)(s->nbuf * s->ctx.d) * sizeof(float));
    kv_buf_put_arr(out, s->bp, (size_t)s->nbuf * sizeof(int64_t));
    kv_buf_put_arr(out, s->bml, (size_t)(2 * s->nbuf) * sizeof(double));
    kv_slots_save(&s->sl, out);
}

/* The ring and counters read, and the held rows checked by kv_slots_load
 * (finite, indices below n_total and distinct): counters in range, the
 * ring's slots filled 0..nbuf-1 with finite rows, prefixes in 1..n_total
 * and merged (m, l) with l >= 0 finite and m finite iff l > 0 (else -inf),
 * the held indices ascending. */
static int snapkv_valid(const snapkv_state *s, const kv_slots *sl, int64_t share, int64_t hlast, int64_t seen,
                        int64_t nbuf, int64_t head, size_t nbq, const float *bq, size_t nbp, const int64_t *bp,
                        size_t nbml, const double *bml)
{
    int64_t n = sl->held, lim = kv_shard_limit(&s->ctx);
    size_t d = (size_t)s->ctx.d;
    if (share < 0 || share > s->B || n > share || hlast < 0 || hlast > s->ctx.n_total || seen < n ||
        seen > lim || nbuf < 0 || nbuf > s->W || head < 0 || head >= s->W || (nbuf < s->W && head != nbuf))
        return 0;
    size_t nb = (size_t)nbuf;
    if (nbq != nb * d || nbp != nb || nbml != 2 * nb || (nb && !kv_all_finite(bq, nb * d))) return 0;
    for (size_t j = 0; j < nb; j++) {
        const double *ml = bml + 2 * j;
        if (bp[j] < 1 || bp[j] > s->ctx.n_total || !isfinite(ml[1]) || !(ml[1] >= 0) ||
            (ml[1] > 0 ? !isfinite(ml[0]) : ml[0] != -INFINITY))
            return 0;
    }
    for (int64_t i = 1; i < n; i++)
        if (sl->idx[i] <= sl->idx[i - 1]) return 0;
    return 1;
}

static int snapkv_load(void *state, kv_rd *in, kv_err *err)
{
    snapkv_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), share, hlast, seen, nbuf, head;
    size_t nbq = 0, nbp = 0, nbml = 0;
    void *bq = NULL, *bp = NULL, *bml = NULL;
    size_t W = (size_t)s->W, d = (size_t)s->ctx.d;
    kv_slots sl;
    if (kv_rd_i64(in, &share, err) || kv_rd_i64(in, &hlast, err) || kv_rd_i64(in, &seen, err) ||
        kv_rd_i64(in, &nbuf, err) || kv_rd_i64(in, &head, err) ||
        kv_rd_arr(in, &bq, sizeof(float), W * d, &nbq, err) || kv_rd_arr(in, &bp, sizeof(int64_t), W, &nbp, err) ||
        kv_rd_arr(in, &bml, sizeof(double), 2 * W, &nbml, err) ||
        kv_slots_load(&sl, &s->sl, in, s->B < lim ? s->B : lim, s->ctx.n_total, "snapkv", err))
        goto fail;
    if (!snapkv_valid(s, &sl, share, hlast, seen, nbuf, head, nbq, bq, nbp, bp, nbml, bml)) {
        kv_slots_free(&sl);
        kv_seterr(err, KV_EINPUT, "checkpoint: snapkv state is inconsistent");
        goto fail;
    }
    size_t nb = (size_t)nbuf;
    if (nb) {
        memcpy(s->bq, bq, sizeof(float) * nb * d);
        memcpy(s->bp, bp, sizeof(int64_t) * nb);
        memcpy(s->bml, bml, sizeof(double) * 2 * nb);
    }
    free(bq); free(bp); free(bml);
    kv_slots_free(&s->sl);
    s->sl = sl;
    s->share = share; s->hlast = hlast; s->seen = seen; s->nbuf = nbuf; s->head = head;
    return KV_OK;
fail:
    free(bq); free(bp); free(bml);
    return err->code;
}

static int64_t snapkv_max_bytes(const void *state)
{
    const snapkv_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->B < lim ? s->B : lim;
    return held * slot_bytes(s->ctx.d, s->ctx.dv) + s->W * query_bytes(s->ctx.d);
}

const kv_method_ops kv_method_snapkv = {
    .name = "snapkv",
    .kind = "eviction",
    .summary = "SnapKV for decoding: every period tokens, keep the top tokens by the pooled attention of the last queries",
    .budget = "tokens= (or budget= bytes) over all ranks together (peak), shared among ranks by the tokens each has seen",
    .params = snapkv_params,
    .cfg_size = sizeof(snapkv_cfg),
    .check = snapkv_cfg_check,
    .create = snapkv_create,
    .ingest = snapkv_ingest,
    .partial = snapkv_partial,
    .horizon = snapkv_horizon,
    .feedback = snapkv_feedback,
    .bytes = snapkv_bytes,
    .extra = snapkv_extra,
    .cost = snapkv_cost,
    .free = snapkv_free,
    .save = snapkv_save,
    .load = snapkv_load,
    .max_bytes = snapkv_max_bytes,
};
