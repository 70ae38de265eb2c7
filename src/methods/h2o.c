/* h2o.c - h2o:tokens=<B>[,recent=<R>] or h2o:budget=<X>[,recent=<R>]:
 * heavy hitters (H2O, Zhang et al. 2023), ALGORITHMS.md section 4.
 *
 * Global budget.  B tokens are held over all ranks together, whatever their
 * number: the recent part is the R globally newest tokens (indices >= p - R
 * at prefix p: each rank keeps its own tokens in that range), and the
 * remaining H = B - R heavy-hitter slots are split among the ranks by how
 * many of the non-recent tokens each holds: at each horizon p (method.h) a
 * rank's share until the next horizon is
 *     share = floor(H * below / (p - R)),  below = its tokens < p - R
 * (kv_rank_tokens_below, from the driver's chunk), so the shares never sum
 * over H, and with B >= n every rank keeps every token (exact at any P).
 * Without the chunk (ctx->chunk = 0) the split is by what each has seen,
 * floor(seen * H / p') at the previous horizon p' (before any token,
 * floor(H * shard / n)), which starves the ranks holding the early tokens.
 * A rank fills its share with its non-recent tokens of the largest
 * (score, index) and evicts the lowest when the share shrinks.  With one
 * rank this is H2O with budget B exactly; with more, each rank's heavy
 * hitters are its own best, a split of the global choice.  budget=X gives
 * B = floor(bytes(X) / bytes per held token) (core/budget.h; the per-token
 * bytes below, nothing per rank), so the ranks' memory summed stays within
 * X; tokens= and budget= exclude each other; recent defaults to B/2.
 *
 * Scores: a token's score is the attention it received from the queries
 * answered so far, normalised by the global softmax: partial() only answers,
 * and feedback() (the merged (m, l) of every query) adds exp(a - m) / l to
 * each held token, for all queries of a call at once, so answers do not
 * depend on the order of queries within a call (scores only up to rounding).
 *
 * Eviction order: lowest (score, index) first; an arriving non-recent token
 * has score 0 and the newest index, so it displaces only a score-0 token.
 *
 * Memory: held slots x ((d + dv) floats + index + score + three int32
 * (heap position, two heaps)), counted by capacity: the arrays are resized
 * to the slots in use after every horizon and ingest. */
#include <math.h>
#include <stdlib.h>
#include "kernels/held.h"
#include "methods/method.h"
#include "methods/slots.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t B, R, H;      /* global: tokens, recent, heavy-hitter slots */
    int64_t share;        /* this rank's heavy-hitter slots now */
    int64_t hz;           /* prefix the recent part is relative to */
    int64_t hlast;        /* last horizon: every rank has ingested its tokens < hlast */
    int64_t seen;         /* tokens ingested */
    kv_query_cost cost;   /* method.h: cost */
    kv_slots sl;          /* heap 0: heavy hitters by (score, index); heap 1: recent tokens by index */
} h2o_state;

typedef struct {
    int64_t tokens, recent;
    kv_budget budget;
} h2o_cfg;
KV_CFG_FITS(h2o_cfg);

static const kv_param_def h2o_params[] = {
    KV_PARAM_INT(h2o_cfg, tokens, 1024, 1, INT32_MAX, "tokens held over all ranks together"),
    KV_PARAM_INT_DERIVED(h2o_cfg, recent, -1, "tokens/2", 0, INT32_MAX,
                         "of those, the globally newest always kept; <= tokens"),
    KV_PARAM_BUDGET(h2o_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_TABLE_END
};

enum { HEAVY = 0, RECENT = 1 }; /* the two heaps of the slots */

static int64_t slot_bytes(int d, int dv)
{
    return kv_slots_row_bytes(d, dv, 2, 0);
}

static int h2o_cfg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    h2o_cfg *c = cfg;
    if (c->budget.kind != KV_BUDGET_NONE) {
        if (kv_spec_has(spec, "tokens"))
            return kv_params_error(h2o_params, spec, err, "give tokens= or budget=, not both");
        return KV_OK; /* recent is checked in create, once the budget is in tokens */
    }
    if (c->recent < 0) c->recent = c->tokens / 2;
    if (c->recent > c->tokens)
        return kv_params_error(h2o_params, spec, err, "recent=%lld exceeds tokens=%lld", (long long)c->recent,
                               (long long)c->tokens);
    return KV_OK;
}

extern const kv_method_ops kv_method_h2o;

static int h2o_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const h2o_cfg *c = kv_method_cfg(&kv_method_h2o, spec, err);
    if (!c) return err->code;
    int64_t B = c->tokens, R = c->recent;
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes(ctx->d, ctx->dv), bytes = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv);
        B = bytes / per;
        if (B < 1)
            return kv_params_error(h2o_params, spec, err, "budget of %lld bytes holds no token (one takes %lld)",
                                   (long long)bytes, (long long)per);
        if (B > INT32_MAX)
            return kv_params_error(h2o_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
        if (R < 0) R = B / 2;
        if (R > B)
            return kv_params_error(h2o_params, spec, err, "recent=%lld exceeds the %lld tokens the budget holds",
                                   (long long)R, (long long)B);
    }
    h2o_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->B = B;
    s->R = R;
    s->H = B - R;
    s->share = kv_slots_first_share(ctx, s->H);
    kv_slots_init(&s->sl, ctx->d, ctx->dv, 2, 0);
    *out = s;
    return KV_OK;
}

/* The prefix is now p: tokens below p - R leave the recent part and compete
 * as heavy hitters; the lowest go while the heavy part exceeds the share. */
static void advance(h2o_state *s, int64_t p)
{
    kv_slots *sl = &s->sl;
    if (p > s->hz) s->hz = p;
    while (sl->hsize[RECENT] > 0 && sl->idx[kv_slots_top(sl, RECENT)] < s->hz - s->R)
        kv_slots_push(sl, HEAVY, kv_slots_pop(sl, RECENT));
    while (sl->hsize[HEAVY] > s->share) kv_slots_drop(sl, kv_slots_pop(sl, HEAVY));
}

static void h2o_horizon(void *state, int64_t p)
{
    h2o_state *s = state;
    if (p < s->hlast) return; /* not the driver's promise: ignore */
    /* shares sum to <= H: by the non-recent tokens of each rank when the
     * sharding is known, else by what each has ingested (its tokens < hlast) */
    int64_t x = p - s->R, below = x > 0 ? kv_rank_tokens_below(&s->ctx, x) : -1;
    if (below >= 0) s->share = (int64_t)((__int128)below * s->H / x);
    else if (s->hlast > 0) s->share = (int64_t)((__int128)s->seen * s->H / s->hlast);
    s->hlast = p;
    advance(s, p);
    kv_slots_resize(&s->sl, s->sl.held); /* shrinking cannot fail for good (it keeps the old blocks) */
}

static int h2o_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    h2o_state *s = state;
    kv_slots *sl = &s->sl;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    /* a driver that skipped horizon: the prefix is at least what arrived */
    if (first + (int64_t)n > s->hz) advance(s, first + (int64_t)n);
    int64_t lo = s->hz - s->R, rnew = 0;
    for (size_t i = 0; i < n; i++) rnew += first + (int64_t)i >= lo;
    int64_t hs = sl->hsize[HEAVY] + ((int64_t)n - rnew);
    if (hs > s->share) hs = s->share;
    int64_t need = sl->held + rnew + (hs - sl->hsize[HEAVY]); /* exactly the slots in use after the block */
    if (kv_slots_grow(sl, need, "h2o", err)) return err->code;
    for (size_t i = 0; i < n; i++) {
        int64_t t = first + (int64_t)i;
        int32_t slot;
        int w = HEAVY;
        if (t >= lo) {
            slot = (int32_t)sl->held++;
            w = RECENT;
        } else if (sl->hsize[HEAVY] < s->share) {
            slot = (int32_t)sl->held++;
        } else if (sl->hsize[HEAVY] > 0 && sl->score[kv_slots_top(sl, HEAVY)] <= 0) { /* (0, t) beats (0, older) */
            slot = kv_slots_pop(sl, HEAVY);
        } else {
            continue;
        }
        kv_slots_set(sl, slot, K + i * d, V + i * dv, t, 0.0);
        kv_slots_push(sl, w, slot);
    }
    s->seen += (int64_t)n;
    kv_slots_resize(sl, sl->held);
    return KV_OK;
}

static int h2o_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    h2o_state *s = state;
    (void)p; /* every held token is < p */
    kv_slots_cost(&s->sl, nq, &s->cost);
    return kv_attn_held(Q, nq, s->sl.K, s->sl.V, (size_t)s->sl.held, s->ctx.d, s->ctx.dv, s->ctx.scale, st);
}

/* Scores += the global attention weights of the call's queries (ml: merged
 * m, l per query), added after all of them. */
static int h2o_feedback(void *state, const float *Q, int nq, int64_t p, const double *ml)
{
    h2o_state *s = state;
    kv_slots *sl = &s->sl;
    size_t n = (size_t)sl->held, d = (size_t)s->ctx.d;
    (void)p;
    if (!n || nq <= 0) return KV_OK;
    kv_slots_score_cost(sl, nq, &s->cost);
    double *inc = calloc(n, sizeof(double));
    if (!inc) return KV_EINTERNAL;
    for (int q = 0; q < nq; q++) {
        double m = ml[2 * q], l = ml[2 * q + 1];
        if (!(l > 0)) continue; /* no token anywhere */
        for (size_t t = 0; t < n; t++)
            inc[t] += exp(kv_held_logit(Q + (size_t)q * d, sl->K + t * d, s->ctx.d, s->ctx.scale) - m) / l;
    }
    for (size_t t = 0; t < n; t++) sl->score[t] += inc[t];
    kv_slots_heapify(sl, HEAVY);
    free(inc);
    return KV_OK;
}

static size_t h2o_bytes(const void *state)
{
    const h2o_state *s = state;
    return kv_slots_bytes(&s->sl);
}

static void h2o_cost(const void *state, kv_query_cost *c)
{
    *c = ((const h2o_state *)state)->cost;
}

static void h2o_extra(const void *state, kv_method_extra *x)
{
    const h2o_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->sl.held;
}

static void h2o_free(void *state)
{
    h2o_state *s = state;
    if (!s) return;
    kv_slots_free(&s->sl);
    free(s);
}

/* Counters, then the slots as held (partial sums over them in slot order),
 * their scores and both heaps (kv_slots_save). */
static void h2o_save(const void *state, kv_buf *out)
{
    const h2o_state *s = state;
    kv_buf_put_i64(out, s->share);
    kv_buf_put_i64(out, s->hz);
    kv_buf_put_i64(out, s->hlast);
    kv_buf_put_i64(out, s->seen);
    kv_slots_save(&s->sl, out);
}

/* What horizon, ingest and feedback maintain beyond kv_slots_load's rules:
 * counters in range, indices below hz, the recent ones (>= hz - R) in the
 * recent heap and the others in the heavy one. */
static int h2o_valid(const h2o_state *s)
{
    const kv_slots *sl = &s->sl;
    int64_t n = sl->held, lim = kv_shard_limit(&s->ctx);
    if (s->share < 0 || s->share > s->H || sl->hsize[HEAVY] > s->share || sl->hsize[RECENT] > s->R || s->hlast < 0 ||
        s->hz < s->hlast || s->hz > s->ctx.n_total || s->seen < n || s->seen > lim)
        return 0;
    for (int64_t i = 0; i < n; i++)
        if ((sl->pos[i] < 0) != (sl->idx[i] >= s->hz - s->R)) return 0;
    return 1;
}

static int h2o_load(void *state, kv_rd *in, kv_err *err)
{
    h2o_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx);
    h2o_state t = *s;
    if (kv_rd_i64(in, &t.share, err) || kv_rd_i64(in, &t.hz, err) || kv_rd_i64(in, &t.hlast, err) ||
        kv_rd_i64(in, &t.seen, err) || kv_slots_load(&t.sl, &s->sl, in, s->B < lim ? s->B : lim, t.hz, "h2o", err))
        return err->code;
    if (!h2o_valid(&t)) {
        kv_slots_free(&t.sl);
        return kv_seterr(err, KV_EINPUT, "checkpoint: h2o state is inconsistent");
    }
    kv_slots_free(&s->sl);
    *s = t;
    return KV_OK;
}

static int64_t h2o_max_bytes(const void *state)
{
    const h2o_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->B < lim ? s->B : lim;
    return held * slot_bytes(s->ctx.d, s->ctx.dv);
}

const kv_method_ops kv_method_h2o = {
    .name = "h2o",
    .kind = "eviction",
    .summary = "H2O heavy hitters: the tokens with the most accumulated attention, plus the most recent",
    .budget = "tokens= (or budget= bytes) over all ranks together: the R globally newest plus shares of the rest",
    .params = h2o_params,
    .cfg_size = sizeof(h2o_cfg),
    .check = h2o_cfg_check,
    .create = h2o_create,
    .ingest = h2o_ingest,
    .partial = h2o_partial,
    .horizon = h2o_horizon,
    .feedback = h2o_feedback,
    .bytes = h2o_bytes,
    .extra = h2o_extra,
    .cost = h2o_cost,
    .free = h2o_free,
    .save = h2o_save,
    .load = h2o_load,
    .max_bytes = h2o_max_bytes,
};
