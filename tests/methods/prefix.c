/* prefix.c - prefix:T=<tokens> | prefix:budget=<X>: attention over the
 * first T tokens of the stream only.  A method of the test tree: built into
 * the conformance test binary alone (tests/conformance.cmake), it shows that
 * a method plugs in with one file and is checked without any list edited
 * (docs/ADDING_A_METHOD.md).
 *
 * T is global: rank r keeps its own tokens with index < T, so the ranks
 * together hold exactly the first T tokens at any P (P-invariant).  The
 * rows are allocated at create: this rank's tokens below T when the chunk
 * is known (kv_rank_tokens_below, summing to T over the ranks), else
 * min(T, shard).  budget=X: T = X / (bytes of one token's row). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "conform.h"
#include "core/budget.h"
#include "kernels/partial.h"
#include "methods/method.h"

typedef struct { int64_t T; kv_budget budget; } prefix_cfg;
KV_CFG_FITS(prefix_cfg);

static const kv_param_def prefix_params[] = {
    KV_PARAM_INT(prefix_cfg, T, 64, 1, INT64_MAX, "tokens kept: the first T of the stream (global)"),
    KV_PARAM_BUDGET(prefix_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of T: T = what fits"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_prefix;

typedef struct {
    kv_method_ctx ctx;
    int64_t T, cap, count; /* global T; rows allocated; rows held */
    float *K, *V;
} prefix_state;

static int prefix_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    const prefix_cfg *c = cfg;
    if (c->budget.kind && kv_spec_has(spec, "T"))
        return kv_params_error(prefix_params, spec, err, "give T or budget, not both");
    return KV_OK;
}

static int64_t row_bytes(const kv_method_ctx *c) { return (int64_t)(c->d + c->dv) * (int64_t)sizeof(float); }

static int prefix_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const prefix_cfg *c = kv_method_cfg(&kv_method_prefix, spec, err);
    if (!c) return err->code;
    int64_t T = c->T;
    if (c->budget.kind) {
        T = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv) / row_bytes(ctx);
        if (T < 1) return kv_params_error(prefix_params, spec, err, "budget does not hold one token");
    }
    int64_t below = kv_rank_tokens_below(ctx, T), lim = kv_shard_limit(ctx);
    int64_t cap = below >= 0 ? below : T < lim ? T : lim;
    prefix_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->T = T;
    s->cap = cap;
    s->K = kv_calloc((size_t)cap * (size_t)ctx->d + 1, sizeof(float), err);
    s->V = kv_calloc((size_t)cap * (size_t)ctx->dv + 1, sizeof(float), err);
    if (!s->K || !s->V) {
        free(s->K);
        free(s->V);
        free(s);
        return err->code;
    }
    *out = s;
    return KV_OK;
}

static int prefix_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    prefix_state *s = state;
    int d = s->ctx.d, dv = s->ctx.dv;
    for (size_t i = 0; i < n && first + (int64_t)i < s->T; i++) {
        if (s->count == s->cap) return kv_seterr(err, KV_EINTERNAL, "prefix: more tokens below T than allocated");
        memcpy(s->K + s->count * d, K + i * d, sizeof(float) * (size_t)d);
        memcpy(s->V + s->count * dv, V + i * dv, sizeof(float) * (size_t)dv);
        s->count++;
    }
    return KV_OK;
}

/* every held token is < p: the rank has ingested exactly its tokens < p */
static int prefix_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    (void)p;
    const prefix_state *s = state;
    int d = s->ctx.d, dv = s->ctx.dv;
    for (int q = 0; q < nq; q++) {
        double *o = st + q * KV_PSTATE_LEN(dv);
        kv_partial_clear(o, dv);
        for (int64_t j = 0; j < s->count; j++) {
            double a = 0;
            for (int k = 0; k < d; k++) a += (double)Q[q * d + k] * s->K[j * d + k];
            kv_partial_add_one(o, dv, a * s->ctx.scale, 1.0, s->V + j * dv);
        }
    }
    return KV_OK;
}

static size_t prefix_bytes(const void *state)
{
    const prefix_state *s = state;
    return (size_t)(s->cap * row_bytes(&s->ctx));
}

static int64_t prefix_max_bytes(const void *state)
{
    const prefix_state *s = state;
    return s->cap * row_bytes(&s->ctx);
}

static void prefix_free(void *state)
{
    prefix_state *s = state;
    if (!s) return;
    free(s->K);
    free(s->V);
    free(s);
}

static void prefix_save(const void *state, kv_buf *out)
{
    const prefix_state *s = state;
    kv_buf_put_i64(out, s->count);
    kv_buf_put(out, s->K, sizeof(float) * (size_t)(s->count * s->ctx.d));
    kv_buf_put(out, s->V, sizeof(float) * (size_t)(s->count * s->ctx.dv));
}

static int prefix_load(void *state, kv_rd *in, kv_err *err)
{
    prefix_state *s = state;
    int64_t n;
    if (kv_rd_i64(in, &n, err)) return err->code;
    if (n < 0 || n > s->cap) return kv_seterr(err, KV_EINPUT, "checkpoint: prefix state holds %lld rows of %lld",
                                             (long long)n, (long long)s->cap);
    if (kv_rd_get(in, s->K, sizeof(float) * (size_t)(n * s->ctx.d), err) ||
        kv_rd_get(in, s->V, sizeof(float) * (size_t)(n * s->ctx.dv), err))
        return err->code;
    if (!kv_all_finite(s->K, (size_t)(n * s->ctx.d)) || !kv_all_finite(s->V, (size_t)(n * s->ctx.dv)))
        return kv_seterr(err, KV_EINPUT, "checkpoint: prefix state holds non-finite keys or values");
    s->count = n;
    return KV_OK;
}

const kv_method_ops kv_method_prefix = {
    .name = "prefix",
    .kind = "eviction",
    .summary = "the first T tokens of the stream (a method of the test tree)",
    .budget = "T tokens over all ranks (budget=X: T from X)",
    .params = prefix_params,
    .cfg_size = sizeof(prefix_cfg),
    .check = prefix_check,
    .create = prefix_create,
    .ingest = prefix_ingest,
    .partial = prefix_partial,
    .bytes = prefix_bytes,
    .free = prefix_free,
    .save = prefix_save,
    .load = prefix_load,
    .max_bytes = prefix_max_bytes,
    .conform = { "T=50;T=1000000", KV_PINV_ROUNDING },
};
KV_TEST_METHOD(kv_method_prefix)
