/* snapkv.c - snapkv:tokens=<B>|budget=<X>[,window=<w>,kernel=<k>,pool=avg|max,
 * period=<T>,every=<E>]: SnapKV (Li et al. 2024, "SnapKV: LLM Knows What You
 * are Looking for Before Generation") for decoding, ALGORITHMS.md section 4c.
 *
 * SnapKV compresses a prompt once (official code FasterDecoding/SnapKV,
 * snapkv_utils.py at 395b54d: window 32, kernel 5, avgpool): the queries of
 * the last `window` positions (the observation window) vote for the earlier
 * tokens by their summed attention, the votes are pooled over `kernel`
 * neighbouring positions (so a kept token brings its neighbours), and the
 * top tokens are kept with the window itself.  Here the stream never ends,
 * so the vote is repeated:
 *
 *   - the query rows of the last `window` answered positions (all the rows
 *     of a position: the query heads of this kv head vote together) are
 *     buffered with the merged global (m, l) the feedback hook gives;
 *   - at each decision point x (every query position, and every multiple of
 *     `every` between them) once the tokens held over all ranks exceed B,
 *     they are compressed to B - T' (T' = min(period, B - window)), so a
 *     compression comes about every T' tokens;
 *   - the tokens of the newest `window` positions, [x - window, x), are
 *     always kept (the observation window); every other held token t gets
 *     vote(t) = sum over the buffered rows r at positions q_r > t of
 *     exp(a_r(t) - m_r) / l_r, pooled over the held non-window tokens within
 *     kernel/2 positions (avg: their sum over kernel, torch's zero-padded
 *     avg_pool1d; max: their largest), and the lowest (pooled, index) go.
 *
 * The decision is the one one rank holding every token makes (method.h:
 * decide hooks): the lowest keys are merged over the ranks, and the pooling
 * sees the neighbours another rank holds across a shard-chunk boundary
 * through the decision's halo (the votes within kernel/2 of every
 * boundary).  So the answers do not depend on P; near-ties are counted.
 * B >= n: nothing is ever dropped, exact attention.  budget=X: B =
 * floor((bytes(X) - P window g q) / slot) - every, q = one buffered row
 * (d floats, position, m, l), g the query rows per position, slot the
 * per-token bytes below.
 *
 * --budget-scope layer|trace (scope.h, ALGORITHMS.md 4g): B is the total of
 * the scope's ns streams (budget=: ns times one stream's share); each
 * stream keeps its own window and tokens, the group compresses when its
 * total exceeds B, to B - T' (T' = min(ns period, B - ns window)), and the
 * pooled votes of all ns streams compete (a vote is a sum of softmax
 * weights, comparable across heads).  AdaKV's safeguard, floor=alpha
 * (default 0.2): of the K candidates the group keeps (B - T' less the
 * windows), each stream keeps at least floor(alpha K / ns) (scope.h:
 * kv_scope_floor); the streams' counts ride on the halo, one double each.
 *
 * Memory: allocated slots x ((d + dv) floats + index + vote + pooled
 * score + an int32 entry of ord, the slots by token index) + the buffered
 * rows; the slot arrays are resized to the slots in use after every
 * decision and ingest.
 *
 * Speed (ALGORITHMS.md 4a, Ingest speed): votes are cached per slot and,
 * once the buffer changed, summed afresh only for the tokens older than a
 * row that left it (the newer ones add the new rows' terms: the same sum);
 * pooled scores are cached too and pooled again only where a vote in their
 * window may have changed; a decision takes the lowest keys in one pass,
 * compacts ord and moves only the kept rows above the new count into the
 * gone slots below it (about T' rows, not every row after the first gone
 * one).  Keys and kept tokens are bitwise those of recomputing everything
 * at every decision; the answers fold the rows in slot order, so they
 * differ from an index-ordered fold by rounding only (and a checkpoint
 * keeps the slot order: a resumed run has the same bits).
 *
 * Files: this one (parameters, ingest, answers, the buffered rows, memory,
 * checkpoints), snapkv_decide.c (the decision), snapkv_state.h (what they share). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/common/scope.h"
#include "methods/snapkv/snapkv_state.h"

typedef struct {
    int64_t tokens, window, period, kernel, pool, every, store;
    double floor;
    kv_budget budget;
} snapkv_cfg;
KV_CFG_FITS(snapkv_cfg);

static const kv_param_def snapkv_params[] = {
    KV_PARAM_INT(snapkv_cfg, tokens, 1024, 2, INT32_MAX, "tokens held over all ranks together (after each decision)"),
    KV_PARAM_INT(snapkv_cfg, window, 32, 1, 4096,
                 "observation window, in positions: their queries vote, their tokens are always kept (< tokens)"),
    KV_PARAM_INT(snapkv_cfg, period, 64, 1, INT32_MAX, "tokens between compressions (capped at tokens - window)"),
    KV_PARAM_INT(snapkv_cfg, kernel, 5, 1, 1023, "pooling width over neighbouring positions (odd)"),
    KV_PARAM_ENUM(snapkv_cfg, pool, "avg|max", 0, "pooling of the votes: avg (official default) or max"),
    KV_PARAM_INT(snapkv_cfg, every, 16, 1, INT32_MAX,
                 "tokens between eviction decisions besides every query position (the peak holds up to this many more)"),
    KV_PARAM_DOUBLE(snapkv_cfg, floor, 0.2, 0, 1,
                    "--budget-scope layer|trace: each stream keeps at least this fraction of an even share of the "
                    "kept candidates (AdaKV's alpha)"),
    KV_PARAM_BUDGET(snapkv_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_ENUM(snapkv_cfg, store, KV_STORE_CHOICES, 0, KV_STORE_HELP),
    KV_PARAM_TABLE_END
};

/* a held token: its row, index and scratch (slots.h), and its entry in ord */
static int64_t slot_bytes(int store, int d, int dv)
{
    return kv_slots_row_bytes_in(store, d, dv, 0, sizeof(snapkv_slot)) + (int64_t)sizeof(int32_t);
}

int snapkv_fit_ord(snapkv_state *s)
{
    int64_t want = s->sl.phys;
    if (want == s->ocap) return KV_OK;
    if (want == 0) {
        free(s->ord);
        s->ord = NULL;
        s->ocap = 0;
        return KV_OK;
    }
    int32_t *o = realloc(s->ord, sizeof(int32_t) * (size_t)want);
    if (!o) return want > s->ocap ? KV_EINTERNAL : KV_OK; /* a failed shrink keeps the larger block */
    s->ord = o;
    s->ocap = want;
    return KV_OK;
}

static int64_t row_bytes(int d)
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
    if (c->budget.kind == KV_BUDGET_NONE && c->window >= c->tokens)
        return kv_params_error(snapkv_params, spec, err, "window=%lld must be below tokens=%lld", (long long)c->window,
                               (long long)c->tokens);
    return KV_OK;
}

extern const kv_method_ops kv_method_snapkv;

static void snapkv_free(void *state);

static int64_t group_rows(const kv_method_ctx *ctx) { return ctx->q_group > 0 ? ctx->q_group : 1; }

static int snapkv_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const snapkv_cfg *c = kv_method_cfg(&kv_method_snapkv, spec, err);
    if (!c) return err->code;
    int64_t B = c->tokens, ns = kv_scope_streams(ctx);
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes((int)c->store, ctx->d, ctx->dv), bytes = kv_scope_share_bytes(&c->budget, ctx);
        int64_t buf = c->window * group_rows(ctx) * row_bytes(ctx->d) + kv_store_fixed_of((int)c->store, ctx->d, ctx->dv);
        int64_t rest = bytes - buf; /* one copy, counted on rank 0: B must not depend on P */
        B = rest > 0 ? rest / per - c->every : 0;
        if (B <= c->window)
            return kv_params_error(snapkv_params, spec, err,
                                   "budget of %lld bytes holds %lld tokens, not more than the window of %lld (one takes "
                                   "%lld, plus %lld for the buffered queries, and %lld arriving between "
                                   "decisions are reserved: every=)",
                                   (long long)bytes, (long long)(B > 0 ? B : 0), (long long)c->window, (long long)per,
                                   (long long)buf, (long long)c->every);
        if (B > INT32_MAX)
            return kv_params_error(snapkv_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
        B *= ns;
    } else if (ns > 1 && B <= ns * c->window) {
        return kv_params_error(snapkv_params, spec, err, "tokens=%lld do not exceed the windows of %lld streams (%lld)",
                               (long long)B, (long long)ns, (long long)(ns * c->window));
    }
    int64_t h = c->kernel / 2;
    if (ctx->nranks > 1 && h > 0 && ctx->chunk > 0 && 2 * h > ctx->chunk)
        return kv_params_error(snapkv_params, spec, err,
                               "kernel=%lld is wider than the shard chunk (%lld tokens): the pooling could not see "
                               "its neighbours on other ranks",
                               (long long)c->kernel, (long long)ctx->chunk);
    snapkv_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->B = B;
    s->W = c->window;
    s->ns = (int)ns;
    s->alpha = c->floor;
    s->T = ns * c->period < B - ns * c->window ? ns * c->period : B - ns * c->window;
    s->kern = c->kernel;
    s->maxpool = c->pool == 1;
    s->E = c->every;
    s->stale = s->vfull = 1;
    s->vrm = s->px = -1;
    kv_slots_init(&s->sl, ctx->d, ctx->dv, 0, sizeof(snapkv_slot));
    if (kv_store_init(&s->store, (int)c->store, ctx->d, ctx->dv, ctx->seed, ctx->stream, ctx->rank == 0, err)) {
        free(s);
        return err->code;
    }
    kv_slots_use_store(&s->sl, &s->store);
    *out = s;
    return KV_OK;
}

static int snapkv_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    snapkv_state *s = state;
    kv_slots *sl = &s->sl;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    if (kv_slots_grow(sl, sl->held + (int64_t)n, "snapkv", err)) return err->code;
    if (snapkv_fit_ord(s))
        return kv_seterr(err, KV_EINTERNAL, "snapkv: out of memory holding %lld tokens", (long long)sl->phys);
    for (size_t i = 0; i < n; i++) {
        int64_t slot = sl->held;
        if (kv_slots_set(sl, (int32_t)slot, K + i * d, V + i * dv, first + (int64_t)i, 0.0))
            return kv_store_refused(&s->store, "snapkv", err);
        s->ord[sl->held++] = (int32_t)slot; /* the newest token: last in index order */
        /* no buffered row has seen it: its vote is 0, as a recomputation gives */
        *slot_of(s, slot) = (snapkv_slot){ 0, 0 };
    }
    s->seen += (int64_t)n;
    kv_slots_resize(sl, sl->held);
    snapkv_fit_ord(s); /* a grow back within the arrays: nothing to do */
    return KV_OK;
}

static int snapkv_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    snapkv_state *s = state;
    (void)p; /* every held token is < p */
    kv_slots_cost(&s->sl, nq, &s->cost);
    return kv_slots_attn(&s->sl, Q, nq, s->ctx.scale, st);
}

/* Distinct positions among the buffered rows. */
static int64_t buffered_positions(const snapkv_state *s)
{
    int64_t np = 0;
    for (int64_t j = 0; j < s->nrows; j++) np += j == 0 || s->bp[j] != s->bp[j - 1];
    return np;
}

/* Buffer the call's rows with their global (m, l); only the last W
 * positions stay (the oldest leaves first, so the buffer never holds more
 * than W positions' rows). */
static int snapkv_feedback(void *state, const float *Q, int nq, int64_t p, const double *ml)
{
    snapkv_state *s = state;
    size_t d = (size_t)s->ctx.d;
    if (nq <= 0) return KV_OK;
    int64_t np = buffered_positions(s);
    if (np > 0 && np + (s->bp[s->nrows - 1] != p) > s->W) { /* the oldest position leaves */
        int64_t k = 1;
        while (k < s->nrows && s->bp[k] == s->bp[0]) k++;
        s->vrm = s->bp[0]; /* positions ascend: the newest that left */
        memmove(s->bq, s->bq + (size_t)k * d, sizeof(float) * d * (size_t)(s->nrows - k));
        memmove(s->bp, s->bp + k, sizeof(int64_t) * (size_t)(s->nrows - k));
        memmove(s->bml, s->bml + 2 * k, sizeof(double) * 2 * (size_t)(s->nrows - k));
        s->nrows -= k;
    }
    if (s->nrows + nq != s->rcap) { /* exactly the rows held: what bytes() counts is what is allocated */
        int64_t cap = s->nrows + nq;
        float *q = realloc(s->bq, sizeof(float) * d * (size_t)cap);
        if (!q) return KV_EINTERNAL;
        s->bq = q;
        int64_t *bp = realloc(s->bp, sizeof(int64_t) * (size_t)cap);
        if (!bp) return KV_EINTERNAL;
        s->bp = bp;
        double *m = realloc(s->bml, sizeof(double) * 2 * (size_t)cap);
        if (!m) return KV_EINTERNAL;
        s->bml = m;
        s->rcap = cap;
    }
    memcpy(s->bq + (size_t)s->nrows * d, Q, sizeof(float) * d * (size_t)nq);
    memcpy(s->bml + 2 * s->nrows, ml, sizeof(double) * 2 * (size_t)nq);
    for (int q = 0; q < nq; q++) s->bp[s->nrows + q] = p;
    s->nrows += nq;
    s->vadd += nq;
    s->stale = 1;
    return KV_OK;
}

static void snapkv_cost(const void *state, kv_query_cost *c)
{
    *c = ((const snapkv_state *)state)->cost;
}

static size_t snapkv_bytes(const void *state)
{
    const snapkv_state *s = state;
    /* the buffered rows once, on rank 0 (see the header) */
    return kv_slots_bytes(&s->sl) + (size_t)s->sl.cap * sizeof(int32_t) + (s->ctx.rank == 0 ? (size_t)(s->rcap * row_bytes(s->ctx.d)) : 0) +
           (size_t)kv_store_fixed_bytes(&s->store);
}

static void snapkv_extra(const void *state, kv_method_extra *x)
{
    const snapkv_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->sl.held;
    x->near_ties = s->ties;
}

static void snapkv_free(void *state)
{
    snapkv_state *s = state;
    if (!s) return;
    kv_slots_free(&s->sl);
    kv_store_free(&s->store);
    free(s->ord);
    free(s->bq);
    free(s->bp);
    free(s->bml);
    free(s);
}

/* Counters, the buffered rows, the held tokens (in slot order, which the
 * answers fold them in: a resumed run gives the same bits; the order by
 * index is made again at load).  Votes and pooled scores are not saved: a
 * recomputation gives the same numbers. */
static void snapkv_save(const void *state, kv_buf *out)
{
    const snapkv_state *s = state;
    kv_buf_put_i64(out, s->xlast);
    kv_buf_put_i64(out, s->gheld);
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_i64(out, s->ties);
    kv_buf_put_arr(out, s->bq, (size_t)(s->nrows * s->ctx.d) * sizeof(float));
    kv_buf_put_arr(out, s->bp, (size_t)s->nrows * sizeof(int64_t));
    kv_buf_put_arr(out, s->bml, (size_t)(2 * s->nrows) * sizeof(double));
    kv_slots_save(&s->sl, out);
}

/* Counters in range, rows finite at non-decreasing positions in 1..n_total
 * over at most W positions, merged (m, l) with l >= 0 finite and m finite
 * iff l > 0 (else -inf), the held indices distinct (ord: ascending). */
static int snapkv_valid(const snapkv_state *s, const snapkv_state *t, size_t nbq, size_t nbp, size_t nbml)
{
    int64_t n = t->sl.held, lim = kv_shard_limit(&s->ctx);
    size_t nb = (size_t)t->nrows, d = (size_t)s->ctx.d;
    if (t->xlast < 0 || t->xlast > s->ctx.n_total || t->gheld < 0 || t->gheld > s->B || n > t->gheld ||
        t->seen < n || t->seen > lim || t->ties < 0 || t->ties > t->xlast)
        return 0;
    if (nbq != nb * d || nbp != nb || nbml != 2 * nb || (nb && !kv_all_finite(t->bq, nb * d))) return 0;
    for (size_t j = 0; j < nb; j++) {
        const double *ml = t->bml + 2 * j;
        if (t->bp[j] < 1 || t->bp[j] > s->ctx.n_total || (j && t->bp[j] < t->bp[j - 1]) || !isfinite(ml[1]) ||
            !kv_merged_l_ok(ml[1], s->ctx.n_total) || (ml[1] > 0 ? !isfinite(ml[0]) : ml[0] != -INFINITY))
            return 0;
    }
    if (buffered_positions(t) > s->W) return 0;
    for (int64_t i = 1; i < n; i++)
        if (tok_at(t, i) <= tok_at(t, i - 1)) return 0;
    return 1;
}

/* ord of a loaded set: its slots by index.  KV_EINTERNAL without memory. */
typedef struct {
    int64_t t, slot;
} tok_slot;

static int by_token(const void *a, const void *b)
{
    const tok_slot *x = a, *y = b;
    return x->t < y->t ? -1 : x->t > y->t ? 1 : (x->slot > y->slot) - (x->slot < y->slot);
}

static int order_slots(snapkv_state *t)
{
    int64_t n = t->sl.held;
    if (snapkv_fit_ord(t)) return KV_EINTERNAL;
    if (!n) return KV_OK;
    tok_slot *ts = malloc(sizeof *ts * (size_t)n);
    if (!ts) return KV_EINTERNAL;
    for (int64_t i = 0; i < n; i++) ts[i] = (tok_slot){ t->sl.idx[i], i };
    qsort(ts, (size_t)n, sizeof *ts, by_token);
    for (int64_t i = 0; i < n; i++) t->ord[i] = (int32_t)ts[i].slot;
    free(ts);
    return KV_OK;
}

static int snapkv_load(void *state, kv_rd *in, kv_err *err)
{
    snapkv_state *s = state, t = *s;
    int64_t lim = kv_shard_limit(&s->ctx), most = s->B + s->E < lim ? s->B + s->E : lim;
    size_t nbq = 0, nbp = 0, nbml = 0, rmax = (size_t)(s->W * 4096);
    void *bq = NULL, *bp = NULL, *bml = NULL;
    if (kv_rd_i64(in, &t.xlast, err) || kv_rd_i64(in, &t.gheld, err) || kv_rd_i64(in, &t.seen, err) ||
        kv_rd_i64(in, &t.ties, err) || kv_rd_arr(in, &bq, sizeof(float), rmax * (size_t)s->ctx.d, &nbq, err) ||
        kv_rd_arr(in, &bp, sizeof(int64_t), rmax, &nbp, err) ||
        kv_rd_arr(in, &bml, sizeof(double), 2 * rmax, &nbml, err) ||
        kv_slots_load(&t.sl, &s->sl, in, most, s->ctx.n_total, "snapkv", err)) {
        free(bq);
        free(bp);
        free(bml);
        return err->code;
    }
    t.bq = bq;
    t.bp = bp;
    t.bml = bml;
    t.ord = NULL;
    t.ocap = 0;
    t.nrows = t.rcap = (int64_t)nbp;
    t.stale = t.vfull = 1;
    t.vadd = 0;
    t.vrm = t.px = -1;
    int oom = order_slots(&t), bad = !oom && !snapkv_valid(s, &t, nbq, nbp, nbml);
    if (bad || oom) {
        kv_slots_free(&t.sl);
        free(t.ord);
        free(bq);
        free(bp);
        free(bml);
        return oom ? kv_seterr(err, KV_EINTERNAL, "checkpoint: snapkv: out of memory")
                   : kv_seterr(err, KV_EINPUT, "checkpoint: snapkv state is inconsistent");
    }
    kv_slots_free(&s->sl);
    free(s->ord);
    free(s->bq);
    free(s->bp);
    free(s->bml);
    *s = t;
    return KV_OK;
}

static int64_t snapkv_max_bytes(const void *state)
{
    const snapkv_state *s = state;
    int64_t held = kv_scope_held_max(&s->ctx, s->B, s->E, kv_shard_limit(&s->ctx));
    return held * slot_bytes(s->store.which, s->ctx.d, s->ctx.dv) +
           (s->ctx.rank == 0 ? s->W * group_rows(&s->ctx) * row_bytes(s->ctx.d) : 0) + kv_store_fixed_bytes(&s->store);
}

const kv_method_ops kv_method_snapkv = {
    .name = "snapkv",
    .kind = "eviction",
    .summary = "SnapKV for decoding: every period tokens, keep the observation window and the top tokens by the "
               "pooled attention of its queries",
    .budget = "tokens= (or budget= bytes) over all ranks together, held after each decision",
    .params = snapkv_params,
    .cfg_size = sizeof(snapkv_cfg),
    .check = snapkv_cfg_check,
    .create = snapkv_create,
    .ingest = snapkv_ingest,
    .partial = snapkv_partial,
    .feedback = snapkv_feedback,
    .decide_every = snapkv_every,
    .decide_group = snapkv_group,
    .decide_need = snapkv_need,
    .decide_extra = snapkv_extra_cands,
    .decide_halo_len = snapkv_halo_len,
    .decide_halo = snapkv_halo,
    .decide_cands = snapkv_cands,
    .decide_apply = snapkv_apply,
    .bytes = snapkv_bytes,
    .extra = snapkv_extra,
    .free = snapkv_free,
    .save = snapkv_save,
    .load = snapkv_load,
    .max_bytes = snapkv_max_bytes,
    .cost = snapkv_cost,
    .scoped = 1,
    .conform = { "tokens=120;tokens=90,window=3,period=20,kernel=3,pool=max,every=7;tokens=100,store=kivi8;tokens=80,store=tq2", KV_PINV_ROUNDING },
};
