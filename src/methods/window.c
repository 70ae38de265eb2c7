/* window.c - window:W=<tokens> | window:budget=<X>: attention over the
 * last W tokens of the stream only (ALGORITHMS.md section 3), kept exactly.
 *
 * W is a global quantity: a query at prefix p sees tokens [p-W, p).  Under
 * sharding a rank keeps those of its own tokens that some future query can
 * still see: the driver's horizon (method.h) says every later prefix is
 * >= p, so tokens < p - W go, and the P ranks together hold the W tokens
 * [p-W, p) at every prefix (plus at most two part-filled 16-token pages per
 * rank holding tokens), however the stream is sharded.  At query time only
 * tokens with index >= p - W are used, so the merged result is exactly
 * attention over the last W tokens, for any P.
 *
 * budget=X (core/budget.h): W = the most tokens whose pages fit in X after
 * a reserve for part-used pages and page tables (kv_tokring_fit: exact for
 * shard chunks >= W/2; smaller chunks spread the window over more ranks,
 * each of which may hold two part-used 16-token pages).
 *
 * Memory: allocated pages (16 tokens x ((d + dv) floats + one int64 index))
 * and the page table (methods/tokring.h). */
#include <stdlib.h>
#include "methods/method.h"
#include "methods/common/scope.h"
#include "kernels/partial.h"
#include "methods/common/tokring.h"

typedef struct { int64_t W, store; kv_budget budget; } window_cfg;
KV_CFG_FITS(window_cfg);

static const kv_param_def window_params[] = {
    KV_PARAM_INT(window_cfg, W, 1024, 1, INT64_MAX, "tokens of the window (global): a query at p sees [p-W, p)"),
    KV_PARAM_BUDGET(window_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of W: W = what fits"),
    KV_PARAM_ENUM(window_cfg, store, KV_STORE_CHOICES, 0, KV_STORE_HELP),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_window;

static int window_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    const window_cfg *c = cfg;
    if (c->budget.kind && kv_spec_has(spec, "W"))
        return kv_params_error(window_params, spec, err, "give W or budget, not both");
    return KV_OK;
}

typedef struct {
    kv_method_ctx ctx;
    int64_t W;
    int64_t h; /* the driver's horizon: no later query is below it */
    kv_tokring ring;
    kv_query_cost cost; /* method.h: cost */
    kv_store store;     /* how the ring holds its tokens (store.h) */
    kv_qprep qp;        /* queries in the store's domain */
} window_state;

static int window_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const window_cfg *c = kv_method_cfg(&kv_method_window, spec, err);
    if (!c) return err->code;
    int64_t W = c->W;
    if (c->budget.kind) {
        int st = (int)c->store;
        /* scope: an even split (ALGORITHMS.md 4g); a tq store's rotations come first (store.h) */
        int64_t B = kv_scope_share_bytes(&c->budget, ctx), fx = kv_store_fixed_of(st, ctx->d, ctx->dv);
        W = kv_tokring_fit_in(B - fx, st, ctx->d, ctx->dv, ctx->nranks);
        if (W < 1)
            return kv_params_error(window_params, spec, err, "budget of %lld bytes does not hold one token's pages "
                                   "(%lld bytes needed)", (long long)B,
                                   (long long)(fx + kv_tokring_fit_min_in(st, ctx->d, ctx->dv, ctx->nranks)));
    }
    window_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->W = W;
    kv_tokring_init(&s->ring, ctx->d, ctx->dv, W);
    if (kv_store_init(&s->store, (int)c->store, ctx->d, ctx->dv, ctx->seed, ctx->stream, ctx->rank == 0, err)) {
        free(s);
        return err->code;
    }
    kv_tokring_use_store(&s->ring, &s->store);
    *out = s;
    return KV_OK;
}

static int window_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    window_state *s = state;
    size_t i0 = n > (size_t)s->W ? n - (size_t)s->W : 0; /* earlier rows would be dropped at once */
    if (first + (int64_t)i0 < s->h - s->W) i0 = (size_t)(s->h - s->W - first); /* and so would these */
    for (size_t i = i0; i < n; i++) {
        int64_t g = first + (int64_t)i;
        while (s->ring.count && kv_tokring_idx(&s->ring, 0) <= g - s->W) kv_tokring_pop(&s->ring);
        if (kv_tokring_push(&s->ring, K + i * s->ctx.d, V + i * s->ctx.dv, g, err)) return err->code;
    }
    return KV_OK;
}

static void window_horizon(void *state, int64_t p)
{
    window_state *s = state;
    if (p > s->h) s->h = p;
    kv_tokring_drop_below(&s->ring, p - s->W);
}

static int window_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    window_state *s = state;
    size_t sl = KV_PSTATE_LEN(s->ctx.dv);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, s->ctx.dv);
    if (nq <= 0) return KV_OK;
    int64_t from = kv_tokring_lower(&s->ring, p - s->W);
    kv_tokring_cost(&s->ring, from, nq, &s->cost);
    const float *Qs = kv_store_prep(&s->store, &s->qp, Q, nq);
    if (!Qs) return KV_EINTERNAL;
    int rc = kv_tokring_fold(&s->ring, from, Qs, nq, (float)s->ctx.scale, st);
    kv_store_finish(&s->store, st, nq);
    return rc;
}

static size_t window_bytes(const void *state)
{
    const window_state *s = state;
    return kv_tokring_bytes(&s->ring) + (size_t)kv_store_fixed_bytes(&s->store);
}

static void window_extra(const void *state, kv_method_extra *x)
{
    const window_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->ring.count;
}

static void window_cost(const void *state, kv_query_cost *c)
{
    *c = ((const window_state *)state)->cost;
}

static void window_free(void *state)
{
    window_state *s = state;
    if (!s) return;
    kv_tokring_free(&s->ring);
    kv_store_free(&s->store);
    kv_qprep_free(&s->qp);
    free(s);
}

/* tokens this rank will see: its shard, or the whole stream if unknown */

static void window_save(const void *state, kv_buf *out)
{
    const window_state *s = state;
    kv_tokring_save(&s->ring, out);
}

static int window_load(void *state, kv_rd *in, kv_err *err)
{
    window_state *s = state;
    if (kv_tokring_load(&s->ring, in, kv_shard_limit(&s->ctx), s->ctx.n_total, err)) return err->code;
    /* ingest keeps only tokens newer than (newest - W) */
    const kv_tokring *r = &s->ring;
    if (r->count && kv_tokring_idx(r, r->count - 1) - kv_tokring_idx(r, 0) >= s->W) {
        kv_tokring_free(&s->ring);
        return kv_seterr(err, KV_EINPUT, "checkpoint: window state holds tokens outside the window");
    }
    return KV_OK;
}

static int64_t window_max_bytes(const void *state)
{
    const window_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->W < lim ? s->W : lim; /* the ring never holds more than W */
    return kv_tokring_max_bytes_in(s->store.which, s->ctx.d, s->ctx.dv, held) + kv_store_fixed_bytes(&s->store);
}

const kv_method_ops kv_method_window = {
    .name = "window",
    .kind = "eviction",
    .summary = "the last W tokens of the stream, kept exactly",
    .budget = "W tokens over all ranks (budget=X: W from X)",
    .params = window_params,
    .cfg_size = sizeof(window_cfg),
    .check = window_check,
    .create = window_create,
    .horizon = window_horizon,
    .ingest = window_ingest,
    .partial = window_partial,
    .bytes = window_bytes,
    .extra = window_extra,
    .cost = window_cost,
    .scoped = 1,
    .free = window_free,
    .save = window_save,
    .load = window_load,
    .prefix_state = 1,
    .max_bytes = window_max_bytes,
    .conform = { "W=100;W=1000000000;W=3;W=100,store=kivi4;W=90,store=tq3", KV_PINV_ROUNDING },
};
