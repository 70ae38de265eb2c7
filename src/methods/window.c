/* window.c - window:W=<tokens>: attention over the last W tokens of
 * the stream only (ALGORITHMS.md section 3), kept exactly.
 *
 * W is a global quantity: a query at prefix p sees tokens [p-W, p).  Under
 * sharding a rank keeps those of its own tokens that some future query can
 * still see: a future prefix is > g_max (this rank's newest token), so tokens
 * older than g_max + 1 - W are dropped.  That is at most W tokens per rank
 * and at most W + P*C over the P ranks for chunk length C (every rank's
 * newest token is within P*C of the stream's).  At query time only tokens
 * with index >= p - W are used, so the merged result is exactly attention
 * over the last W tokens.
 *
 * Memory: held tokens x ((d + dv) floats + one int64 index). */
#include <stdlib.h>
#include "methods/method.h"
#include "kernels/partial.h"
#include "methods/tokring.h"

typedef struct { int64_t W; } window_cfg;
KV_CFG_FITS(window_cfg);

static const kv_param_def window_params[] = {
    KV_PARAM_INT(window_cfg, W, 1024, 1, INT64_MAX, "tokens of the window (global): a query at p sees [p-W, p)"),
    KV_PARAM_TABLE_END
};

typedef struct {
    kv_method_ctx ctx;
    int64_t W;
    kv_tokring ring;
} window_state;

extern const kv_method_ops kv_method_window;

static int window_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const window_cfg *c = kv_method_cfg(&kv_method_window, spec, err);
    if (!c) return err->code;
    int64_t W = c->W;
    window_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->W = W;
    kv_tokring_init(&s->ring, ctx->d, ctx->dv, W);
    *out = s;
    return KV_OK;
}

static int window_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    window_state *s = state;
    size_t i0 = n > (size_t)s->W ? n - (size_t)s->W : 0; /* earlier rows would be dropped at once */
    for (size_t i = i0; i < n; i++) {
        int64_t g = first + (int64_t)i;
        while (s->ring.count && kv_tokring_idx(&s->ring, 0) <= g - s->W) kv_tokring_pop(&s->ring);
        if (kv_tokring_push(&s->ring, K + i * s->ctx.d, V + i * s->ctx.dv, g, err)) return err->code;
    }
    return KV_OK;
}

static int window_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    window_state *s = state;
    size_t sl = KV_PSTATE_LEN(s->ctx.dv);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, s->ctx.dv);
    if (nq <= 0) return KV_OK;
    return kv_tokring_fold(&s->ring, kv_tokring_lower(&s->ring, p - s->W), Q, nq, (float)s->ctx.scale, st);
}

static size_t window_bytes(const void *state)
{
    const window_state *s = state;
    return kv_tokring_bytes(&s->ring);
}

static void window_extra(const void *state, kv_method_extra *x)
{
    const window_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->ring.count;
}

static void window_free(void *state)
{
    window_state *s = state;
    if (!s) return;
    kv_tokring_free(&s->ring);
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
    return held * ((int64_t)(s->ctx.d + s->ctx.dv) * (int64_t)sizeof(float) + (int64_t)sizeof(int64_t));
}

const kv_method_ops kv_method_window = {
    .name = "window",
    .kind = "eviction",
    .summary = "the last W tokens of the stream, kept exactly",
    .budget = "W tokens (at most W per rank)",
    .params = window_params,
    .cfg_size = sizeof(window_cfg),
    .create = window_create,
    .ingest = window_ingest,
    .partial = window_partial,
    .bytes = window_bytes,
    .extra = window_extra,
    .free = window_free,
    .save = window_save,
    .load = window_load,
    .max_bytes = window_max_bytes,
};
