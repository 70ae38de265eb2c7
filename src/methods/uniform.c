/* uniform.c - uniform:budget=<tokens>[,seed=<n>]: a uniform
 * reservoir sample of the tokens (Algorithm R), ALGORITHMS.md section 4.
 *
 * budget is the total over the ranks: each rank samples its share
 * (kv_rank_share: proportional to its shard, ceil(budget/P) when shards are
 * even) of its own tokens, so memory is comparable across rank counts.  A kept token
 * stands for n_seen/held tokens of its rank: the partial state weights it by
 * that factor in both l and u, so each rank's sums are unbiased and the
 * output (u over l after the merge) is a ratio estimator.  The sample is
 * seeded by (seed, stream, rank); seed defaults to the replay's --seed.
 *
 * Memory: held x (d + dv) floats + the seen counter and the generator. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "methods/method.h"
#include "kernels/partial.h"
#include "core/rng.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t budget;      /* per rank */
    int64_t held, alloc; /* tokens kept, rows allocated */
    int64_t seen;        /* tokens of this rank ingested so far */
    float *K, *V;
    kv_rng rng;
} uniform_state;

typedef struct { int64_t budget, seed; } uniform_cfg;
KV_CFG_FITS(uniform_cfg);

static const kv_param_def uniform_params[] = {
    KV_PARAM_INT(uniform_cfg, budget, 1024, 1, INT64_MAX, "tokens sampled over all ranks (each rank its share)"),
    KV_PARAM_INT_DERIVED(uniform_cfg, seed, -1, "--seed", 0, INT64_MAX,
                         "sample seed (stream and rank are mixed in)"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_uniform;

static int uniform_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const uniform_cfg *c = kv_method_cfg(&kv_method_uniform, spec, err);
    if (!c) return err->code;
    int64_t budget = c->budget, seed = c->seed < 0 ? (int64_t)ctx->seed : c->seed;
    uniform_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->budget = kv_rank_share(ctx, budget);
    kv_rng_seed(&s->rng, (uint64_t)seed, (uint64_t)ctx->stream, (uint64_t)ctx->rank);
    *out = s;
    return KV_OK;
}

static int grow(uniform_state *s, kv_err *err)
{
    int64_t n = s->alloc ? 2 * s->alloc : 64;
    if (n > s->budget) n = s->budget;
    float *K = realloc(s->K, sizeof(float) * (size_t)s->ctx.d * (size_t)n);
    if (K) s->K = K;
    float *V = realloc(s->V, sizeof(float) * (size_t)s->ctx.dv * (size_t)n);
    if (V) s->V = V;
    if (!K || !V) return kv_seterr(err, KV_EINTERNAL, "uniform: out of memory holding %lld tokens", (long long)n);
    s->alloc = n;
    return KV_OK;
}

static int uniform_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    uniform_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    (void)first;
    for (size_t i = 0; i < n; i++) {
        int64_t slot;
        if (s->held < s->budget) {
            if (s->held == s->alloc && grow(s, err)) return err->code;
            slot = s->held++;
        } else {
            /* Algorithm R: the (seen+1)-th token replaces a random slot
             * with probability budget/(seen+1) */
            slot = (int64_t)kv_rng_below(&s->rng, (uint64_t)s->seen + 1);
        }
        s->seen++;
        if (slot >= s->budget) continue;
        memcpy(s->K + (size_t)slot * d, K + i * d, sizeof(float) * d);
        memcpy(s->V + (size_t)slot * dv, V + i * dv, sizeof(float) * dv);
    }
    return KV_OK;
}

static int uniform_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    uniform_state *s = state;
    int dv = s->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv);
    (void)p; /* every ingested token is < p */
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    if (!s->held || nq <= 0) return KV_OK;
    int rc = kv_attn_fold_par(Q, nq, s->K, s->V, (size_t)s->held, s->ctx.d, dv, (float)s->ctx.scale, st);
    if (rc) return rc;
    double w = (double)s->seen / (double)s->held;
    for (int q = 0; q < nq; q++) {
        double *x = st + q * sl;
        x[KV_PS_L] *= w;
        x[KV_PS_L2] *= w;
        for (int c = 0; c < dv; c++) x[KV_PS_U + c] *= w;
    }
    return KV_OK;
}

static size_t uniform_bytes(const void *state)
{
    const uniform_state *s = state;
    return (size_t)s->held * (size_t)(s->ctx.d + s->ctx.dv) * sizeof(float) + sizeof s->seen + sizeof s->rng;
}

static void uniform_extra(const void *state, kv_method_extra *x)
{
    const uniform_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->held;
}

static void uniform_free(void *state)
{
    uniform_state *s = state;
    if (!s) return;
    free(s->K);
    free(s->V);
    free(s);
}


/* The sample in slot order, the seen counter and the generator: the next
 * replacement decisions depend on all three. */
static void uniform_save(const void *state, kv_buf *out)
{
    const uniform_state *s = state;
    kv_buf_put_i64(out, s->seen);
    kv_buf_put(out, s->rng.s, sizeof s->rng.s);
    kv_buf_put_arr(out, s->K, (size_t)s->held * (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_arr(out, s->V, (size_t)s->held * (size_t)s->ctx.dv * sizeof(float));
}

static int uniform_load(void *state, kv_rd *in, kv_err *err)
{
    uniform_state *s = state;
    int64_t seen;
    kv_rng rng;
    void *K = NULL, *V = NULL;
    size_t nk = 0, nv = 0, cap = (size_t)s->budget;
    if (kv_rd_i64(in, &seen, err) || kv_rd_get(in, rng.s, sizeof rng.s, err) ||
        kv_rd_arr(in, &K, sizeof(float) * (size_t)s->ctx.d, cap, &nk, err) ||
        kv_rd_arr(in, &V, sizeof(float) * (size_t)s->ctx.dv, cap, &nv, err))
        goto fail;
    /* Algorithm R holds min(seen, budget) tokens; xoshiro's state is never all zero */
    int64_t want = seen < s->budget ? seen : s->budget;
    if (seen < 0 || seen > kv_shard_limit(&s->ctx) || nk != nv || (int64_t)nk != want ||
        !(rng.s[0] | rng.s[1] | rng.s[2] | rng.s[3]) || !kv_all_finite(K, nk * (size_t)s->ctx.d) ||
        !kv_all_finite(V, nv * (size_t)s->ctx.dv)) {
        kv_seterr(err, KV_EINPUT, "checkpoint: uniform state is inconsistent");
        goto fail;
    }
    free(s->K);
    free(s->V);
    s->K = K;
    s->V = V;
    s->held = s->alloc = (int64_t)nk;
    s->seen = seen;
    s->rng = rng;
    return KV_OK;
fail:
    free(K);
    free(V);
    return err->code;
}

static int64_t uniform_max_bytes(const void *state)
{
    const uniform_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->budget < lim ? s->budget : lim;
    return held * (int64_t)(s->ctx.d + s->ctx.dv) * (int64_t)sizeof(float) + (int64_t)(sizeof s->seen + sizeof s->rng);
}

const kv_method_ops kv_method_uniform = {
    .name = "uniform",
    .kind = "sampling",
    .summary = "a uniform reservoir sample of the tokens, each weighted n_seen/kept",
    .budget = "budget tokens over all ranks (ceil(budget/P) per rank)",
    .params = uniform_params,
    .cfg_size = sizeof(uniform_cfg),
    .create = uniform_create,
    .ingest = uniform_ingest,
    .partial = uniform_partial,
    .bytes = uniform_bytes,
    .extra = uniform_extra,
    .free = uniform_free,
    .save = uniform_save,
    .load = uniform_load,
    .max_bytes = uniform_max_bytes,
};
