/* tova.c - tova:tokens=<B> or tova:budget=<X>: TOVA, token omission via
 * attention (Oren et al. 2024, "Transformers are Multi-State RNNs"),
 * ALGORITHMS.md section 4b.
 *
 * Rule.  After each query is answered, every held token's score is its
 * attention weight under that query, normalised by the GLOBAL softmax (the
 * driver's feedback hook gives each rank the merged (m, l)): the mean of
 * exp(a - m) / l over the queries of the call (one call = one position;
 * several queries = the query heads sharing this kv head, which TOVA
 * averages).  Scores are replaced, not accumulated: only the current query
 * counts.  The held count never exceeds the budget: a token arriving when
 * the rank is full is scored under the last query as well (its weight had
 * it been in that softmax: the call's last query row, its merged m and l,
 * are kept for this) and displaces the lowest (score, index) held token
 * only if it beats it; before any query every score is 0 and the oldest
 * goes, a window.  TOVA proper scores the new token under the next query,
 * which sees it; here queries are sparse and tokens must be dropped before
 * the next query arrives, so the last one stands in for it.
 *
 * Global budget.  B tokens over all ranks together, shared as h2o shares its
 * heavy-hitter slots: at each horizon, the prefix p' reached so far fixes a
 * rank's share until the next horizon as floor(seen * B / p'), seen = the
 * rank's tokens < p' (before any token floor(B * shard / n)), so the shares
 * never sum over B.  Each rank evicts its own lowest tokens: at P > 1 the
 * choice is a split of the global one, close to, not equal to, P = 1.  With
 * B >= n nothing is ever evicted (every rank may hold its whole shard) and
 * the answers are exact attention.  budget=X: B = floor((bytes(X) - P q) /
 * slot), q the kept query row (d floats, m, l) every rank holds, slot the
 * per-token bytes below; tokens= and budget= exclude each other.
 *
 * Memory: allocated slots x ((d + dv) floats + index + score + two int32
 * (heap position, heap)) + the query row; the arrays are resized to the
 * slots in use after every horizon and ingest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/held.h"
#include "methods/method.h"
#include "methods/slots.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t B;            /* global token budget */
    int64_t share;        /* this rank's slots now */
    int64_t hlast;        /* last horizon: every rank has ingested its tokens < hlast */
    int64_t seen;         /* tokens ingested */
    kv_query_cost cost;   /* method.h: cost */
    kv_slots sl;          /* one heap, by (score, index), over every held slot */
    int have_q;           /* a query has been answered */
    float *lq;            /* its last row (d floats) */
    double lm, ll;        /* and its merged max and sum */
} tova_state;

typedef struct {
    int64_t tokens;
    kv_budget budget;
} tova_cfg;
KV_CFG_FITS(tova_cfg);

static const kv_param_def tova_params[] = {
    KV_PARAM_INT(tova_cfg, tokens, 1024, 1, INT32_MAX, "tokens held over all ranks together"),
    KV_PARAM_BUDGET(tova_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_TABLE_END
};

static int64_t slot_bytes(int d, int dv)
{
    return kv_slots_row_bytes(d, dv, 1, 0);
}

static int64_t query_bytes(int d)
{
    return (int64_t)d * (int64_t)sizeof(float) + 2 * (int64_t)sizeof(double);
}

static int tova_cfg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    tova_cfg *c = cfg;
    if (c->budget.kind != KV_BUDGET_NONE && kv_spec_has(spec, "tokens"))
        return kv_params_error(tova_params, spec, err, "give tokens= or budget=, not both");
    return KV_OK;
}

extern const kv_method_ops kv_method_tova;

static int tova_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const tova_cfg *c = kv_method_cfg(&kv_method_tova, spec, err);
    if (!c) return err->code;
    int64_t B = c->tokens;
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes(ctx->d, ctx->dv), bytes = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv);
        int64_t rest = bytes - (int64_t)(ctx->nranks > 0 ? ctx->nranks : 1) * query_bytes(ctx->d);
        B = rest > 0 ? rest / per : 0;
        if (B < 1)
            return kv_params_error(tova_params, spec, err,
                                   "budget of %lld bytes holds no token (one takes %lld, plus %lld per rank)",
                                   (long long)bytes, (long long)per, (long long)query_bytes(ctx->d));
        if (B > INT32_MAX)
            return kv_params_error(tova_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
    }
    tova_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->B = B;
    s->share = B >= ctx->n_total ? B : kv_slots_first_share(ctx, B);
    kv_slots_init(&s->sl, ctx->d, ctx->dv, 1, 0);
    s->lq = kv_calloc((size_t)(ctx->d > 0 ? ctx->d : 1), sizeof(float), err);
    if (!s->lq) {
        free(s);
        return err->code;
    }
    *out = s;
    return KV_OK;
}

static void tova_horizon(void *state, int64_t p)
{
    tova_state *s = state;
    if (p < s->hlast) return; /* not the driver's promise: ignore */
    /* every rank has ingested exactly its tokens < hlast: shares sum to <= B */
    if (s->hlast > 0 && s->B < s->ctx.n_total) s->share = (int64_t)((__int128)s->seen * s->B / s->hlast);
    s->hlast = p;
    while (s->sl.held > s->share) kv_slots_drop(&s->sl, kv_slots_pop(&s->sl, 0));
    kv_slots_resize(&s->sl, s->sl.held); /* shrinking cannot fail for good (it keeps the old blocks) */
}

/* an arriving token's score: its weight under the last query */
static double arrival_score(const tova_state *s, const float *k)
{
    if (!s->have_q || !(s->ll > 0)) return 0.0;
    return exp(kv_held_logit(s->lq, k, s->ctx.d, s->ctx.scale) - s->lm) / s->ll;
}

static int tova_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    tova_state *s = state;
    kv_slots *sl = &s->sl;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    if (kv_slots_make_room(sl, n, s->share, "tova", err)) return err->code;
    for (size_t i = 0; i < n; i++) {
        int64_t t = first + (int64_t)i;
        double sc = arrival_score(s, K + i * d);
        int32_t slot;
        if (sl->held < s->share)
            slot = (int32_t)sl->held++;
        else if (sl->hsize[0] > 0 && sc >= sl->score[kv_slots_top(sl, 0)]) /* (sc, t) beats (sc, older) */
            slot = kv_slots_pop(sl, 0);
        else
            continue;
        kv_slots_set(sl, slot, K + i * d, V + i * dv, t, sc);
        kv_slots_push(sl, 0, slot);
    }
    s->seen += (int64_t)n;
    kv_slots_resize(sl, sl->held);
    return KV_OK;
}

static int tova_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    tova_state *s = state;
    (void)p; /* every held token is < p */
    kv_slots_cost(&s->sl, nq, &s->cost);
    return kv_attn_held(Q, nq, s->sl.K, s->sl.V, (size_t)s->sl.held, s->ctx.d, s->ctx.dv, s->ctx.scale, st);
}

/* Scores = the mean global attention weight under the call's queries; the
 * last query row is kept to score arrivals. */
static int tova_feedback(void *state, const float *Q, int nq, int64_t p, const double *ml)
{
    tova_state *s = state;
    kv_slots *sl = &s->sl;
    size_t n = (size_t)sl->held, d = (size_t)s->ctx.d;
    (void)p;
    if (nq <= 0) return KV_OK;
    kv_slots_score_cost(sl, nq, &s->cost);
    for (size_t t = 0; t < n; t++) {
        double sum = 0;
        for (int q = 0; q < nq; q++) {
            double m = ml[2 * q], l = ml[2 * q + 1];
            if (l > 0) sum += exp(kv_held_logit(Q + (size_t)q * d, sl->K + t * d, s->ctx.d, s->ctx.scale) - m) / l;
        }
        sl->score[t] = sum / nq;
    }
    kv_slots_heapify(sl, 0);
    memcpy(s->lq, Q + (size_t)(nq - 1) * d, sizeof(float) * d);
    s->lm = ml[2 * (nq - 1)];
    s->ll = ml[2 * (nq - 1) + 1];
    s->have_q = 1;
    return KV_OK;
}

static size_t tova_bytes(const void *state)
{
    const tova_state *s = state;
    return kv_slots_bytes(&s->sl) + (size_t)query_bytes(s->ctx.d);
}

static void tova_cost(const void *state, kv_query_cost *c)
{
    *c = ((const tova_state *)state)->cost;
}

static void tova_extra(const void *state, kv_method_extra *x)
{
    const tova_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->sl.held;
}

static void tova_free(void *state)
{
    tova_state *s = state;
    if (!s) return;
    kv_slots_free(&s->sl);
    free(s->lq);
    free(s);
}

/* Counters, the last query, then the slots as held (partial sums over them
 * in slot order), their scores and the heap (kv_slots_save). */
static void tova_save(const void *state, kv_buf *out)
{
    const tova_state *s = state;
    kv_buf_put_i64(out, s->share);
    kv_buf_put_i64(out, s->hlast);
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_i64(out, s->have_q);
    kv_buf_put_arr(out, s->lq, (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_f64(out, s->lm);
    kv_buf_put_f64(out, s->ll);
    kv_slots_save(&s->sl, out);
}

/* What horizon, ingest and feedback maintain beyond kv_slots_load's rules
 * (indices below n_total, finite keys, values and scores >= 0, a valid heap):
 * counters in range, and the last query: nothing before the first (all
 * zero); then finite, and its merged (m, l) with l >= 0 and m finite iff
 * l > 0 (else -inf). */
static int tova_valid(const tova_state *s)
{
    int64_t n = s->sl.held, lim = kv_shard_limit(&s->ctx);
    if (s->share < 0 || s->share > s->B || n > s->share || s->hlast < 0 || s->hlast > s->ctx.n_total ||
        s->seen < n || s->seen > lim || (s->have_q != 0 && s->have_q != 1))
        return 0;
    if (!kv_all_finite(s->lq, (size_t)s->ctx.d) || !isfinite(s->ll) || !(s->ll >= 0)) return 0;
    if (s->have_q ? (s->ll > 0 ? !isfinite(s->lm) : s->lm != -INFINITY) : s->lm != 0 || s->ll != 0) return 0;
    for (int c = 0; !s->have_q && c < s->ctx.d; c++)
        if (s->lq[c] != 0) return 0;
    return 1;
}

static int tova_load(void *state, kv_rd *in, kv_err *err)
{
    tova_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), hq = 0;
    size_t nq = 0;
    void *lq = NULL;
    tova_state t = *s;
    if (kv_rd_i64(in, &t.share, err) || kv_rd_i64(in, &t.hlast, err) || kv_rd_i64(in, &t.seen, err) ||
        kv_rd_i64(in, &hq, err) || kv_rd_arr(in, &lq, sizeof(float), (size_t)s->ctx.d, &nq, err) ||
        kv_rd_f64(in, &t.lm, err) || kv_rd_f64(in, &t.ll, err)) {
        free(lq);
        return err->code;
    }
    if (kv_slots_load(&t.sl, &s->sl, in, s->B < lim ? s->B : lim, s->ctx.n_total, "tova", err)) {
        free(lq);
        return err->code;
    }
    t.have_q = (int)hq;
    t.lq = lq;
    if (nq != (size_t)s->ctx.d || hq < 0 || hq > 1 || !tova_valid(&t)) {
        free(lq);
        kv_slots_free(&t.sl);
        return kv_seterr(err, KV_EINPUT, "checkpoint: tova state is inconsistent");
    }
    kv_slots_free(&s->sl);
    free(s->lq);
    *s = t;
    return KV_OK;
}

static int64_t tova_max_bytes(const void *state)
{
    const tova_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->B < lim ? s->B : lim;
    return held * slot_bytes(s->ctx.d, s->ctx.dv) + query_bytes(s->ctx.d);
}

const kv_method_ops kv_method_tova = {
    .name = "tova",
    .kind = "eviction",
    .summary = "TOVA: after each query, drop the held tokens with the lowest attention under it",
    .budget = "tokens= (or budget= bytes) over all ranks together, shared among ranks by the tokens each has seen",
    .params = tova_params,
    .cfg_size = sizeof(tova_cfg),
    .check = tova_cfg_check,
    .create = tova_create,
    .ingest = tova_ingest,
    .partial = tova_partial,
    .horizon = tova_horizon,
    .feedback = tova_feedback,
    .bytes = tova_bytes,
    .extra = tova_extra,
    .cost = tova_cost,
    .free = tova_free,
    .save = tova_save,
    .load = tova_load,
    .max_bytes = tova_max_bytes,
};
