/* sinks.c - sinks:S=<tokens>,W=<tokens>: StreamingLLM's attention
 * sinks plus a window.  A query at prefix p sees the first S tokens of the
 * stream (global index < S) and the last W, [p-W, p); each token once.
 *
 * S and W are global quantities.  A rank keeps its own tokens with index < S
 * (never dropped: at most S over all ranks) and, for the window, its tokens
 * with index >= S that a future query can still see (as in window.c: the
 * driver's horizon p drops tokens < p - W), so all ranks together hold S + W
 * tokens at every prefix and the result does not depend on P.
 *
 * budget=X: S as given (default 4), W = what fits in X after the sinks'
 * pages (kv_tokring_fit).
 *
 * Memory: allocated 16-token pages of both rings and their page tables
 * (methods/tokring.h). */
#include <stdlib.h>
#include "methods/method.h"
#include "methods/common/scope.h"
#include "kernels/partial.h"
#include "methods/common/tokring.h"

typedef struct { int64_t S, W, store; kv_budget budget; } sinks_cfg;
KV_CFG_FITS(sinks_cfg);

static const kv_param_def sinks_params[] = {
    KV_PARAM_INT(sinks_cfg, S, 4, 0, INT64_MAX, "sink tokens: global indices < S, always kept (StreamingLLM: 4)"),
    KV_PARAM_INT(sinks_cfg, W, 1020, 1, INT64_MAX, "window tokens [p-W, p) (default: S + W = 1024, window's W)"),
    KV_PARAM_BUDGET(sinks_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of W: W = what fits after the sinks"),
    KV_PARAM_ENUM(sinks_cfg, store, KV_STORE_CHOICES, 0, KV_STORE_HELP),
    KV_PARAM_TABLE_END
};

static int sinks_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    const sinks_cfg *c = cfg;
    if (c->budget.kind && kv_spec_has(spec, "W"))
        return kv_params_error(sinks_params, spec, err, "give W or budget, not both");
    return KV_OK;
}

typedef struct {
    kv_method_ctx ctx;
    int64_t S, W;
    int64_t h;        /* the driver's horizon: no later query is below it */
    kv_tokring sinks; /* tokens < S, never popped */
    kv_tokring win;   /* tokens >= S, window */
    kv_query_cost cost; /* method.h: cost */
    kv_store store;     /* how both rings hold their tokens (store.h) */
    kv_qprep qp;        /* queries in the store's domain */
} sinks_state;

extern const kv_method_ops kv_method_sinks;

static int sinks_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const sinks_cfg *c = kv_method_cfg(&kv_method_sinks, spec, err);
    if (!c) return err->code;
    int64_t S = c->S, W = c->W;
    if (c->budget.kind) {
        int st = (int)c->store;
        /* scope: an even split (ALGORITHMS.md 4g); a tq store's rotations come first (store.h) */
        int64_t B = kv_scope_share_bytes(&c->budget, ctx), fx = kv_store_fixed_of(st, ctx->d, ctx->dv);
        int64_t lim = S < ctx->n_total ? S : ctx->n_total, sb = S ? kv_tokring_max_bytes_in(st, ctx->d, ctx->dv, lim) : 0;
        W = kv_tokring_fit_in(B - fx - sb, st, ctx->d, ctx->dv, ctx->nranks);
        if (W < 1)
            return kv_params_error(sinks_params, spec, err, "budget of %lld bytes does not hold the %lld sinks and one "
                                   "window token (%lld bytes needed)", (long long)B, (long long)S,
                                   (long long)(fx + sb + kv_tokring_fit_min_in(st, ctx->d, ctx->dv, ctx->nranks)));
    }
    sinks_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->S = S;
    s->W = W;
    kv_tokring_init(&s->sinks, ctx->d, ctx->dv, S);
    kv_tokring_init(&s->win, ctx->d, ctx->dv, W);
    if (kv_store_init(&s->store, (int)c->store, ctx->d, ctx->dv, ctx->seed, ctx->stream, ctx->rank == 0, err)) {
        free(s);
        return err->code;
    }
    kv_tokring_use_store(&s->sinks, &s->store);
    kv_tokring_use_store(&s->win, &s->store);
    *out = s;
    return KV_OK;
}

static int sinks_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    sinks_state *s = state;
    int d = s->ctx.d, dv = s->ctx.dv;
    for (size_t i = 0; i < n; i++) {
        int64_t g = first + (int64_t)i;
        const float *k = K + i * d, *v = V + i * dv;
        if (g < s->S) {
            if (kv_tokring_push(&s->sinks, k, v, g, err)) return err->code;
            continue;
        }
        if (g < first + (int64_t)n - s->W || g < s->h - s->W) continue; /* would be dropped at once */
        while (s->win.count && kv_tokring_idx(&s->win, 0) <= g - s->W) kv_tokring_pop(&s->win);
        if (kv_tokring_push(&s->win, k, v, g, err)) return err->code;
    }
    return KV_OK;
}

static void sinks_horizon(void *state, int64_t p)
{
    sinks_state *s = state;
    if (p > s->h) s->h = p;
    kv_tokring_drop_below(&s->win, p - s->W);
}

static int sinks_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    sinks_state *s = state;
    size_t sl = KV_PSTATE_LEN(s->ctx.dv);
    float scale = (float)s->ctx.scale;
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, s->ctx.dv);
    if (nq <= 0) return KV_OK;
    int64_t from = kv_tokring_lower(&s->win, p - s->W);
    kv_tokring_cost(&s->sinks, 0, nq, &s->cost);
    kv_tokring_cost(&s->win, from, nq, &s->cost);
    const float *Qs = kv_store_prep(&s->store, &s->qp, Q, nq);
    if (!Qs) return KV_EINTERNAL;
    int rc = kv_tokring_fold(&s->sinks, 0, Qs, nq, scale, st);
    if (!rc) rc = kv_tokring_fold(&s->win, from, Qs, nq, scale, st);
    kv_store_finish(&s->store, st, nq); /* after both folds: their sums are rotated alike */
    return rc;
}

static size_t sinks_bytes(const void *state)
{
    const sinks_state *s = state;
    return kv_tokring_bytes(&s->sinks) + kv_tokring_bytes(&s->win) + (size_t)kv_store_fixed_bytes(&s->store);
}

static void sinks_extra(const void *state, kv_method_extra *x)
{
    const sinks_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->sinks.count + s->win.count;
}

static void sinks_cost(const void *state, kv_query_cost *c)
{
    *c = ((const sinks_state *)state)->cost;
}

static void sinks_free(void *state)
{
    sinks_state *s = state;
    if (!s) return;
    kv_tokring_free(&s->sinks);
    kv_tokring_free(&s->win);
    kv_store_free(&s->store);
    kv_qprep_free(&s->qp);
    free(s);
}


static void sinks_save(const void *state, kv_buf *out)
{
    const sinks_state *s = state;
    kv_tokring_save(&s->sinks, out);
    kv_tokring_save(&s->win, out);
}

static int sinks_load(void *state, kv_rd *in, kv_err *err)
{
    sinks_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx);
    if (kv_tokring_load(&s->sinks, in, lim, s->ctx.n_total, err)) return err->code;
    if (kv_tokring_load(&s->win, in, lim, s->ctx.n_total, err)) {
        kv_tokring_free(&s->sinks);
        return err->code;
    }
    /* sinks are the tokens < S; the window holds tokens >= S newer than (newest - W) */
    const kv_tokring *a = &s->sinks, *b = &s->win;
    int bad = a->count + b->count > lim || (a->count && kv_tokring_idx(a, a->count - 1) >= s->S) ||
              (b->count && (kv_tokring_idx(b, 0) < s->S ||
                            kv_tokring_idx(b, b->count - 1) - kv_tokring_idx(b, 0) >= s->W));
    if (bad) {
        kv_tokring_free(&s->sinks);
        kv_tokring_free(&s->win);
        return kv_seterr(err, KV_EINPUT, "checkpoint: sinks state holds tokens outside the sinks and window");
    }
    return KV_OK;
}

static int64_t sinks_max_bytes(const void *state)
{
    const sinks_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx);
    int64_t a = s->S < lim ? s->S : lim, b = s->W < lim ? s->W : lim;
    int st = s->store.which;
    return kv_tokring_max_bytes_in(st, s->ctx.d, s->ctx.dv, a) + kv_tokring_max_bytes_in(st, s->ctx.d, s->ctx.dv, b) +
           kv_store_fixed_bytes(&s->store);
}

const kv_method_ops kv_method_sinks = {
    .name = "sinks",
    .kind = "eviction",
    .summary = "StreamingLLM: the first S tokens (attention sinks) plus the last W",
    .budget = "S + W tokens",
    .params = sinks_params,
    .cfg_size = sizeof(sinks_cfg),
    .check = sinks_check,
    .create = sinks_create,
    .horizon = sinks_horizon,
    .ingest = sinks_ingest,
    .partial = sinks_partial,
    .bytes = sinks_bytes,
    .extra = sinks_extra,
    .cost = sinks_cost,
    .scoped = 1,
    .free = sinks_free,
    .save = sinks_save,
    .load = sinks_load,
    .prefix_state = 1,
    .max_bytes = sinks_max_bytes,
    .conform = { "S=8,W=50;S=0,W=30;S=200,W=70;S=8,W=50,store=kivi8;S=4,W=40,store=tq4", KV_PINV_ROUNDING },
};
