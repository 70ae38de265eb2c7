/* unmasked_window.c - unmasked-window[:W=<tokens>]: the O(dW)
 * algorithm for sliding-window attention whose value cache outside the
 * window is not masked (--semantics window-unmasked-values).
 *
 * Source: Haris & Onak, "Compression Barriers for Autoregressive
 * Transformers" (COLT 2025, arXiv 2502.15955) state that such an O(dW)
 * algorithm exists; only the paper's abstract could be found, so this
 * implements the reading of ALGORITHMS.md section 3: tokens outside the last
 * W have logit 0 (weight e^0 = 1) but keep their values, so
 *     z = (sum_{window} e^{a_i} v_i + sum_{outside} v_i)
 *         / (sum_{window} e^{a_i} + #outside)
 * needs only the window, the running sum of the values that left it and
 * their count.  It equals method_exact under the same semantics up to
 * rounding.
 *
 * Sharding: a rank keeps its own tokens that some future query may still
 * see inside the window (index > g_max - W, g_max = its newest token; at
 * most W of them) and moves the rest into (sum, count).  At prefix p the held
 * tokens with index < p - W join the outside part, which is the state
 * (m = 0, l = l2 = count, u = sum); the tokens in [p-W, p) are folded
 * exactly and merged into it (ALGORITHMS.md section 1).
 *
 * W must equal the replay's --window (it defines the semantics); it defaults
 * to it.  Memory: held tokens x ((d + dv) floats + int64 index) + the dv
 * double sum + the count: flat in n. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/method.h"
#include "kernels/partial.h"
#include "methods/common/tokring.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t W;
    kv_tokring ring;
    double *out_sum; /* dv: sum of the values that left the window */
    int64_t out_count;
} uw_state;

typedef struct { int64_t W; } uw_cfg;
KV_CFG_FITS(uw_cfg);

static const kv_param_def uw_params[] = {
    KV_PARAM_INT_DERIVED(uw_cfg, W, 0, "--window", 1, INT64_MAX, "the window; must equal the replay's --window"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_unmasked_window;

static int uw_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const uw_cfg *c = kv_method_cfg(&kv_method_unmasked_window, spec, err);
    if (!c) return err->code;
    if (ctx->semantics != KV_SEM_WINDOW_UNMASKED)
        return kv_seterr(err, KV_EINPUT, "--methods: %s: unmasked-window needs --semantics window-unmasked-values",
                         spec->text);
    if (ctx->window < 1)
        return kv_seterr(err, KV_EINPUT, "--methods: %s: the replay window must be >= 1", spec->text);
    int64_t W = c->W ? c->W : ctx->window;
    if (W != ctx->window)
        return kv_seterr(err, KV_EINPUT, "--methods: %s: W=%lld differs from the replay's --window %lld", spec->text,
                         (long long)W, (long long)ctx->window);
    uw_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->W = W;
    kv_tokring_init(&s->ring, ctx->d, ctx->dv, W);
    s->out_sum = kv_calloc((size_t)ctx->dv, sizeof(double), err);
    if (!s->out_sum) { free(s); return err->code; }
    *out = s;
    return KV_OK;
}

static void add_outside(uw_state *s, const float *v)
{
    for (int c = 0; c < s->ctx.dv; c++) s->out_sum[c] += v[c];
    s->out_count++;
}

static int uw_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    uw_state *s = state;
    if (!n) return KV_OK;
    /* tokens <= last - W can never be inside a future query's window; move
     * them to the sum in index order (held ones first, they are older) */
    int64_t last = first + (int64_t)n - 1;
    while (s->ring.count && kv_tokring_idx(&s->ring, 0) <= last - s->W) {
        add_outside(s, kv_tokring_v(&s->ring, 0));
        kv_tokring_pop(&s->ring);
    }
    for (size_t i = 0; i < n; i++) {
        int64_t g = first + (int64_t)i;
        if (g <= last - s->W) add_outside(s, V + i * s->ctx.dv);
        else if (kv_tokring_push(&s->ring, K + i * s->ctx.d, V + i * s->ctx.dv, g, err)) return err->code;
    }
    return KV_OK;
}

static int uw_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    uw_state *s = state;
    int dv = s->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv);
    if (nq <= 0) return KV_OK;
    int64_t lo = kv_tokring_lower(&s->ring, p - s->W);
    int64_t cnt = s->out_count + lo;
    double *out = st; /* build the outside state in query 0's slot, then copy */
    kv_partial_clear(out, dv);
    if (cnt > 0) {
        out[KV_PS_M] = 0.0;
        out[KV_PS_L] = (double)cnt;
        out[KV_PS_L2] = (double)cnt;
        memcpy(out + KV_PS_U, s->out_sum, sizeof(double) * (size_t)dv);
        for (int64_t i = 0; i < lo; i++) {
            const float *v = kv_tokring_v(&s->ring, i);
            for (int c = 0; c < dv; c++) out[KV_PS_U + c] += v[c];
        }
    }
    for (int q = 1; q < nq; q++) memcpy(st + q * sl, out, sizeof(double) * sl);
    return kv_tokring_fold(&s->ring, lo, Q, nq, (float)s->ctx.scale, st);
}

static size_t uw_bytes(const void *state)
{
    const uw_state *s = state;
    return kv_tokring_bytes(&s->ring) + (size_t)s->ctx.dv * sizeof(double) + sizeof(int64_t);
}

static void uw_extra(const void *state, kv_method_extra *x)
{
    const uw_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->ring.count;
}

static void uw_free(void *state)
{
    uw_state *s = state;
    if (!s) return;
    kv_tokring_free(&s->ring);
    free(s->out_sum);
    free(s);
}


static void uw_save(const void *state, kv_buf *out)
{
    const uw_state *s = state;
    kv_tokring_save(&s->ring, out);
    kv_buf_put_arr(out, s->out_sum, sizeof(double) * (size_t)s->ctx.dv);
    kv_buf_put_i64(out, s->out_count);
}

static int uw_load(void *state, kv_rd *in, kv_err *err)
{
    uw_state *s = state;
    int dv = s->ctx.dv;
    int64_t lim = kv_shard_limit(&s->ctx);
    double *sum = NULL;
    size_t n = 0;
    if (kv_tokring_load(&s->ring, in, lim, s->ctx.n_total, err)) return err->code;
    if (kv_rd_arr(in, (void **)&sum, sizeof(double), (size_t)dv, &n, err) || kv_rd_i64(in, &s->out_count, err))
        goto fail;
    /* the window is newer than (newest - W); every token is held or counted
     * once; values are finite, so is their sum */
    const kv_tokring *r = &s->ring;
    int bad = n != (size_t)dv || s->out_count < 0 || s->out_count > lim - r->count ||
              (r->count && kv_tokring_idx(r, r->count - 1) - kv_tokring_idx(r, 0) >= s->W);
    for (size_t c = 0; c < n && !bad; c++) bad = !isfinite(sum[c]);
    if (bad) {
        kv_seterr(err, KV_EINPUT, "checkpoint: unmasked-window state is inconsistent");
        goto fail;
    }
    free(s->out_sum);
    s->out_sum = sum;
    return KV_OK;
fail:
    free(sum);
    kv_tokring_free(&s->ring);
    s->out_count = 0;
    return err->code;
}

static int64_t uw_max_bytes(const void *state)
{
    const uw_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->W < lim ? s->W : lim;
    return kv_tokring_max_bytes(s->ctx.d, s->ctx.dv, held) + (int64_t)s->ctx.dv * (int64_t)sizeof(double) + (int64_t)sizeof(int64_t);
}

const kv_method_ops kv_method_unmasked_window = {
    .name = "unmasked-window",
    .kind = "exact",
    .summary = "the O(dW) exact algorithm for --semantics window-unmasked-values (window + value sum)",
    .budget = "W tokens plus a running sum of dv doubles (flat in n)",
    .params = uw_params,
    .cfg_size = sizeof(uw_cfg),
    .create = uw_create,
    .ingest = uw_ingest,
    .partial = uw_partial,
    .bytes = uw_bytes,
    .extra = uw_extra,
    .free = uw_free,
    .save = uw_save,
    .load = uw_load,
    .max_bytes = uw_max_bytes,
    .conform = { ";W=80", KV_PINV_ROUNDING, KV_SEM_WINDOW_UNMASKED },
};
