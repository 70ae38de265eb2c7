/* h2o.c - h2o:tokens=<B> or h2o:budget=<X>[,recent=<R>][,every=<E>]:
 * heavy hitters (H2O, Zhang et al. 2023), ALGORITHMS.md section 4.
 *
 * B tokens are held over all ranks together, whatever their number, and
 * the decisions are the ones one rank holding every token makes (method.h:
 * decide hooks; replay/decide.c), so the answers do not depend on P.  At
 * each decision point x (every query position, and every multiple of E in
 * between): the recent part is the R globally newest tokens, [x - R, x)
 * (each rank keeps its own in that range); the other H = B - R slots hold
 * the heavy hitters, the H best (score, index) over all ranks of the
 * previous heavy hitters and the tokens that left the recent part since the
 * last point.  Between points arrivals are only held (the memory peak is B
 * plus the tokens arriving before the next point: budget= reserves E of
 * them).  budget=X gives B = floor(bytes(X) / bytes per held token) - E
 * (core/budget.h), so the ranks' memory summed stays within X; tokens= and
 * budget= exclude each other; recent defaults to B/2.  With B >= n nothing
 * is ever evicted: exact attention at any P.
 *
 * --budget-scope layer|trace (scope.h, ALGORITHMS.md 4g): B is the total of
 * the scope's ns streams (budget=: ns times one stream's share), each
 * stream keeps its R = recent (default B / 2ns) newest, and the heavy pool
 * H = B - ns R is shared: the heavy candidates of all ns streams compete by
 * score, which is comparable across heads (each a sum of softmax weights).
 * AdaKV's safeguard, floor=alpha (default 0.2): each stream keeps at least
 * floor(alpha H / ns) of its heavy candidates (scope.h: kv_scope_floor);
 * the streams' counts come from a one-double halo per stream.
 *
 * Scores: a token's score is the attention it received from the queries
 * answered while it was held, normalised by the global softmax: partial()
 * only answers, and feedback() (the merged (m, l) of every query) adds
 * exp(a - m) / l to each held token, for all queries of a call at once, so
 * answers do not depend on the order of queries within a call.  Ties of
 * score go to the newer token.  The merged l is summed in rank order, so at
 * another P a score moves in its last bits: a decision by a margin below
 * KV_EVICT_TIE_REL is counted as a near-tie (extra: near_ties).
 *
 * Memory: held slots x ((d + dv) floats + index + score + three int32
 * (heap position, two heaps)), counted by capacity: the arrays are resized
 * to the slots in use after every decision and ingest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/held.h"
#include "methods/method.h"
#include "methods/common/scope.h"
#include "methods/common/slots.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t B, R, H, E;   /* global over the scope: tokens, heavy-hitter slots; R recent per stream; decision spacing */
    int ns;               /* streams sharing B and the heavy pool (scope.h; 1: per stream) */
    double alpha;         /* the floor's fraction of an even share of H (scope.h) */
    int64_t f, gcnt;      /* at this decision: the floor, the stream's heavy candidates over all ranks */
    int64_t xlast;        /* the last decision point */
    int64_t gheavy;       /* heavy hitters held over all ranks since then */
    int64_t seen;         /* tokens ingested */
    int64_t ties;         /* near-tie decisions */
    kv_query_cost cost;   /* method.h: cost */
    kv_slots sl;          /* heap 0: heavy candidates by (score, index); heap 1: recent tokens by index */
    kv_store store;       /* how the slots hold their rows (store.h) */
} h2o_state;

typedef struct {
    int64_t tokens, recent, every, store;
    double floor;
    kv_budget budget;
} h2o_cfg;
KV_CFG_FITS(h2o_cfg);

static const kv_param_def h2o_params[] = {
    KV_PARAM_INT(h2o_cfg, tokens, 1024, 1, INT32_MAX, "tokens held over all ranks together"),
    KV_PARAM_INT_DERIVED(h2o_cfg, recent, -1, "tokens/2", 0, INT32_MAX,
                         "of those, the globally newest always kept; <= tokens"),
    KV_PARAM_INT(h2o_cfg, every, 16, 1, INT32_MAX,
                 "tokens between eviction decisions besides every query position (the peak holds up to this many more)"),
    KV_PARAM_DOUBLE(h2o_cfg, floor, 0.2, 0, 1,
                    "--budget-scope layer|trace: each stream keeps at least this fraction of an even share of the "
                    "heavy pool (AdaKV's alpha)"),
    KV_PARAM_BUDGET(h2o_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_ENUM(h2o_cfg, store, KV_STORE_CHOICES, 0, KV_STORE_HELP),
    KV_PARAM_TABLE_END
};

enum { HEAVY = 0, RECENT = 1 }; /* the two heaps of the slots */

static int64_t slot_bytes(int store, int d, int dv)
{
    return kv_slots_row_bytes_in(store, d, dv, 2, 0);
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
    int64_t B = c->tokens, R = c->recent, ns = kv_scope_streams(ctx);
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes((int)c->store, ctx->d, ctx->dv), bytes = kv_scope_share_bytes(&c->budget, ctx);
        B = (bytes - kv_store_fixed_of((int)c->store, ctx->d, ctx->dv)) / per - c->every;
        if (B < 1)
            return kv_params_error(h2o_params, spec, err,
                                   "budget of %lld bytes holds no token (one takes %lld, %lld arriving between "
                                   "decisions are reserved: every=, and %lld are the store's rotations)",
                                   (long long)bytes, (long long)per, (long long)c->every,
                                   (long long)kv_store_fixed_of((int)c->store, ctx->d, ctx->dv));
        if (B > INT32_MAX)
            return kv_params_error(h2o_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
        if (R < 0) R = B / 2;
        if (R > B)
            return kv_params_error(h2o_params, spec, err, "recent=%lld exceeds the %lld tokens the budget holds",
                                   (long long)R, (long long)B);
        B *= ns;
    } else if (ns > 1) {
        if (!kv_spec_has(spec, "recent")) R = B / (2 * ns);
        if (R * ns > B)
            return kv_params_error(h2o_params, spec, err, "recent=%lld for each of %lld streams exceeds tokens=%lld",
                                   (long long)R, (long long)ns, (long long)B);
    }
    h2o_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->B = B;
    s->R = R;
    s->H = B - ns * R;
    s->ns = (int)ns;
    s->alpha = c->floor;
    s->E = c->every;
    kv_slots_init(&s->sl, ctx->d, ctx->dv, 2, 0);
    if (kv_store_init(&s->store, (int)c->store, ctx->d, ctx->dv, ctx->seed, ctx->stream, ctx->rank == 0, err)) {
        free(s);
        return err->code;
    }
    kv_slots_use_store(&s->sl, &s->store);
    *out = s;
    return KV_OK;
}

static int h2o_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    h2o_state *s = state;
    kv_slots *sl = &s->sl;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    /* arrivals are recent until the next decision point says otherwise */
    if (kv_slots_grow(sl, sl->held + (int64_t)n, "h2o", err)) return err->code;
    for (size_t i = 0; i < n; i++) {
        int32_t slot = (int32_t)sl->held++;
        if (kv_slots_set(sl, slot, K + i * d, V + i * dv, first + (int64_t)i, 0.0)) {
            sl->held--;
            return kv_store_refused(&s->store, "h2o", err);
        }
        kv_slots_push(sl, RECENT, slot);
    }
    s->seen += (int64_t)n;
    kv_slots_resize(sl, sl->held);
    return KV_OK;
}

static int64_t h2o_every(const void *state) { return ((const h2o_state *)state)->E; }

static int64_t nonrecent(const h2o_state *s, int64_t x) { return x > s->R ? x - s->R : 0; }

static int h2o_group(const void *state) { return ((const h2o_state *)state)->ns; }

/* Point x: the tokens below x - R become heavy candidates; the candidates
 * over all ranks (and the scope's ns streams) are the H held and those
 * newly below x - R. */
static int64_t h2o_need(void *state, int64_t x, int at_query)
{
    h2o_state *s = state;
    kv_slots *sl = &s->sl;
    if (x <= s->xlast || (!at_query && x % s->E)) return 0;
    int64_t cand = s->gheavy + s->ns * (nonrecent(s, x) - nonrecent(s, s->xlast));
    while (sl->hsize[RECENT] > 0 && sl->idx[kv_slots_top(sl, RECENT)] < x - s->R)
        kv_slots_push(sl, HEAVY, kv_slots_pop(sl, RECENT));
    s->xlast = x;
    s->gheavy = cand < s->H ? cand : s->H;
    s->f = kv_scope_floor(s->alpha, s->H, s->ns);
    return cand > s->H ? cand - s->H : 0;
}

static int64_t h2o_extra_cands(const void *state)
{
    const h2o_state *s = state;
    return s->ns * s->f;
}

/* Under a floor: each stream's heavy candidates on this rank. */
static size_t h2o_halo_len(const void *state, int64_t x)
{
    (void)x;
    return ((const h2o_state *)state)->f > 0;
}

static void h2o_halo(void *state, int64_t x, double *halo)
{
    h2o_state *s = state;
    (void)x;
    if (s->f > 0) halo[0] = (double)s->sl.hsize[HEAVY]; /* else the halo has no room (the driver still calls) */
}

static int h2o_cands(void *const *st, int ns, int64_t x, const double *halo, int L, kv_evkey *keys)
{
    kv_slots *sl[ns];
    (void)x;
    for (int k = 0; k < ns; k++) {
        h2o_state *s = st[k];
        sl[k] = &s->sl;
        s->gcnt = halo && s->f > 0 ? (int64_t)halo[k] : 0;
    }
    return kv_scope_slots_lowest(sl, ns, L, keys);
}

static int h2o_apply(void *const *st, int ns, int64_t x, const kv_evkey *merged, int64_t need)
{
    const h2o_state *s0 = st[0];
    kv_evkey cut[ns], next = KV_EVKEY_NONE;
    int64_t cnt[ns];
    (void)x;
    memset(cnt, 0, sizeof cnt); /* ns >= 1: quiets a maybe-uninitialized */
    for (int k = 0; k < ns; k++) cnt[k] = ((h2o_state *)st[k])->gcnt;
    if (kv_scope_floor_cuts(merged, need + 1 + ns * s0->f, ns, need, cnt, s0->f, cut, &next)) return KV_EINTERNAL;
    for (int k = 0; k < ns; k++) {
        h2o_state *s = st[k];
        kv_scope_slots_drop(&s->sl, ns, k, cut[k]);
        s->ties += kv_evict_near_tie(cut[k], next);
        kv_slots_resize(&s->sl, s->sl.held); /* shrinking cannot fail for good (it keeps the old blocks) */
    }
    return KV_OK;
}

static int h2o_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    h2o_state *s = state;
    (void)p; /* every held token is < p */
    kv_slots_cost(&s->sl, nq, &s->cost);
    return kv_slots_attn(&s->sl, Q, nq, s->ctx.scale, st);
}

/* Scores += the global attention weights of the call's queries (ml: merged
 * m, l per query), added after all of them; logits from the keys as held. */
static int h2o_feedback(void *state, const float *Q, int nq, int64_t p, const double *ml)
{
    h2o_state *s = state;
    kv_slots *sl = &s->sl;
    size_t n = (size_t)sl->held;
    (void)p;
    if (!n || nq <= 0) return KV_OK;
    double *inc = calloc(n, sizeof(double));
    const double *a = inc ? kv_slots_logits(sl, Q, nq, s->ctx.scale, 0, (int64_t)n) : NULL;
    if (!a) {
        free(inc);
        return KV_EINTERNAL;
    }
    for (int q = 0; q < nq; q++) {
        double m = ml[2 * q], l = ml[2 * q + 1];
        if (!(l > 0)) continue; /* no token anywhere */
        for (size_t t = 0; t < n; t++) inc[t] += exp(a[(size_t)q * n + t] - m) / l;
    }
    for (size_t t = 0; t < n; t++) sl->score[t] += inc[t];
    kv_slots_heapify(sl, HEAVY);
    kv_slots_score_cost(sl, nq, &s->cost);
    free(inc);
    return KV_OK;
}

static void h2o_cost(const void *state, kv_query_cost *c)
{
    *c = ((const h2o_state *)state)->cost;
}

static size_t h2o_bytes(const void *state)
{
    const h2o_state *s = state;
    return kv_slots_bytes(&s->sl) + (size_t)kv_store_fixed_bytes(&s->store);
}

static void h2o_extra(const void *state, kv_method_extra *x)
{
    const h2o_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->sl.held;
    x->near_ties = s->ties;
}

static void h2o_free(void *state)
{
    h2o_state *s = state;
    if (!s) return;
    kv_slots_free(&s->sl);
    kv_store_free(&s->store);
    free(s);
}

/* Counters, then the slots as held (partial sums over them in slot order),
 * their scores and both heaps (kv_slots_save). */
static void h2o_save(const void *state, kv_buf *out)
{
    const h2o_state *s = state;
    kv_buf_put_i64(out, s->xlast);
    kv_buf_put_i64(out, s->gheavy);
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_i64(out, s->ties);
    kv_slots_save(&s->sl, out);
}

/* What ingest and the decisions maintain beyond kv_slots_load's rules:
 * counters in range, the heavy candidates (heap 0) below xlast - R and at
 * most H of them, the others in the recent heap. */
static int h2o_valid(const h2o_state *s)
{
    const kv_slots *sl = &s->sl;
    int64_t n = sl->held, lim = kv_shard_limit(&s->ctx);
    if (s->xlast < 0 || s->xlast > s->ctx.n_total || s->gheavy < 0 || s->gheavy > s->H ||
        sl->hsize[HEAVY] > s->gheavy || s->seen < n || s->seen > lim || s->ties < 0 || s->ties > s->xlast)
        return 0;
    for (int64_t i = 0; i < n; i++)
        if ((sl->pos[i] < 0) != (sl->idx[i] >= s->xlast - s->R)) return 0;
    return 1;
}

static int h2o_load(void *state, kv_rd *in, kv_err *err)
{
    h2o_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx);
    h2o_state t = *s;
    if (kv_rd_i64(in, &t.xlast, err) || kv_rd_i64(in, &t.gheavy, err) || kv_rd_i64(in, &t.seen, err) ||
        kv_rd_i64(in, &t.ties, err) ||
        kv_slots_load(&t.sl, &s->sl, in, s->B + s->E < lim ? s->B + s->E : lim, s->ctx.n_total, "h2o", err))
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
    int64_t held = kv_scope_held_max(&s->ctx, s->B, s->E, kv_shard_limit(&s->ctx));
    return held * slot_bytes(s->store.which, s->ctx.d, s->ctx.dv) + kv_store_fixed_bytes(&s->store);
}

const kv_method_ops kv_method_h2o = {
    .name = "h2o",
    .kind = "eviction",
    .summary = "H2O heavy hitters: the tokens with the most accumulated attention, plus the most recent",
    .budget = "tokens= (or budget= bytes) over all ranks together: the R globally newest and the H = B - R best scored",
    .params = h2o_params,
    .cfg_size = sizeof(h2o_cfg),
    .check = h2o_cfg_check,
    .create = h2o_create,
    .ingest = h2o_ingest,
    .partial = h2o_partial,
    .feedback = h2o_feedback,
    .decide_every = h2o_every,
    .decide_group = h2o_group,
    .decide_need = h2o_need,
    .decide_extra = h2o_extra_cands,
    .decide_halo_len = h2o_halo_len,
    .decide_halo = h2o_halo,
    .decide_cands = h2o_cands,
    .decide_apply = h2o_apply,
    .bytes = h2o_bytes,
    .extra = h2o_extra,
    .free = h2o_free,
    .save = h2o_save,
    .load = h2o_load,
    .max_bytes = h2o_max_bytes,
    .cost = h2o_cost,
    .scoped = 1,
    .conform = { "tokens=120;tokens=100,recent=0,every=5;tokens=64,recent=64;tokens=100,store=kivi4;tokens=90,store=tq3", KV_PINV_ROUNDING },
};
