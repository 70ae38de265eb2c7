/* window_subgen.c - window+subgen:W=<tokens>,delta=<radius>,t=<keys
 * per cluster>,s=<l2 samples>[,seed=<n>][,index=0|1]: the recent tokens kept
 * exactly, everything older summarised by a SubGen instance (ALGORITHMS.md
 * section 3, "window + sketch"); the two partial states are merged with the
 * section 1 merge, which sums their l and u.
 *
 * A rank keeps its own tokens with index > g_max - W (g_max = its newest
 * token; at most W tokens, as in method_window.c) and feeds every token it
 * drops to its SubGen, made by kv_subgen_new from the SubGen part of this
 * method's config (its table includes SubGen's entries, so delta, t, s,
 * seed and index mean and default exactly as for subgen).  Each held token
 * is used exactly in every query; with one rank the exact part is precisely the last W tokens of the
 * prefix, with several it is each rank's recent tokens (a superset of its
 * share of [p-W, p)).  W is global; delta, t, s and clusters mean what they
 * mean for a plain subgen (totals over ranks, split by shard).  Full-attention
 * semantics only (SubGen refuses the others).
 *
 * budget=X (core/budget.h; not with W, s or clusters): half the bytes to the
 * window, half to SubGen (its own budget rule, subgen/subgen.c).  The window is W =
 * kv_tokring_fit(X/2); rank r's ring holds at most kv_tokring_fit of its
 * shard's share of X/2 tokens (so the rings add up to <= X/2 at any rank
 * count), and when it is full its oldest token goes to SubGen early.
 *
 * Memory: the ring's pages (methods/tokring.h) + SubGen's bytes(). */
#include <stdlib.h>
#include "methods/method.h"
#include "kernels/partial.h"
#include "methods/subgen.h"
#include "methods/common/tokring.h"

typedef struct {
    int64_t W;
    kv_subgen_cfg sg;
} wsg_cfg;
KV_CFG_FITS(wsg_cfg);

/* W, then SubGen's own entries (shared, not copied): its budget= is ours */
static const kv_param_def wsg_params[] = {
    KV_PARAM_INT(wsg_cfg, W, 1024, 1, INT64_MAX, "recent tokens kept exactly (global; at most W per rank)"),
    KV_PARAM_INCLUDE(wsg_cfg, sg, kv_subgen_params),
    KV_PARAM_TABLE_END
};

static int wsg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    wsg_cfg *c = cfg;
    if (c->sg.budget.kind && kv_spec_has(spec, "W"))
        return kv_params_error(wsg_params, spec, err, "give W or budget, not both");
    return kv_subgen_check(&c->sg, wsg_params, spec, err);
}

typedef struct {
    kv_method_ctx ctx;
    int64_t W;
    kv_tokring ring;
    const kv_method_ops *sg_ops;
    void *sg;
    kv_query_cost cost; /* the window's part (method.h: cost); SubGen keeps its own */
} wsg_state;

static void wsg_free(void *state)
{
    wsg_state *s = state;
    if (!s) return;
    kv_tokring_free(&s->ring);
    if (s->sg) s->sg_ops->free(s->sg);
    free(s);
}

extern const kv_method_ops kv_method_window_subgen;

static int wsg_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    *out = NULL;
    const wsg_cfg *c = kv_method_cfg(&kv_method_window_subgen, spec, err);
    if (!c) return err->code;
    wsg_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->W = c->W;
    s->sg_ops = &kv_method_subgen;
    kv_subgen_cfg sg = c->sg;
    int64_t held = c->W; /* most tokens this rank's ring holds */
    if (c->sg.budget.kind) {
        /* budget rule: half the bytes to the window, half to SubGen; the
         * rank's ring gets its shard's share of the window half */
        int64_t B = kv_budget_bytes(&c->sg.budget, ctx->n_total, ctx->d, ctx->dv), Bw = B / 2, Bw_r;
        if (ctx->shard_tokens > 0 && ctx->n_total > 0)
            Bw_r = (int64_t)((__int128)Bw * ctx->shard_tokens / ctx->n_total);
        else
            Bw_r = Bw / (ctx->nranks > 0 ? ctx->nranks : 1);
        s->W = kv_tokring_fit(Bw, ctx->d, ctx->dv, ctx->nranks);
        held = kv_tokring_fit(Bw_r, ctx->d, ctx->dv, 1);
        if (held < 1) {
            wsg_free(s);
            return kv_params_error(wsg_params, spec, err, "budget of %lld bytes leaves rank %d of %d %lld bytes for "
                                   "the window, less than one token's pages (%lld bytes)", (long long)B, ctx->rank,
                                   ctx->nranks, (long long)Bw_r, (long long)kv_tokring_fit_min(ctx->d, ctx->dv, 1));
        }
        if (held > s->W) held = s->W;
        sg.budget = (kv_budget){ KV_BUDGET_BYTES, (double)(B - Bw) };
    }
    kv_tokring_init(&s->ring, ctx->d, ctx->dv, held);
    int rc = kv_subgen_new(&sg, spec->text, ctx, &s->sg, err);
    if (rc) { wsg_free(s); return rc; }
    *out = s;
    return KV_OK;
}

static int wsg_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    wsg_state *s = state;
    int d = s->ctx.d, dv = s->ctx.dv;
    if (!n) return KV_OK;
    /* tokens <= last - W leave the exact part for good: older held ones
     * first, then the block's own, so SubGen sees them in stream order */
    int64_t last = first + (int64_t)n - 1;
    while (s->ring.count && kv_tokring_idx(&s->ring, 0) <= last - s->W) {
        if (s->sg_ops->ingest(s->sg, kv_tokring_k(&s->ring, 0), kv_tokring_v(&s->ring, 0), kv_tokring_idx(&s->ring, 0),
                              1, err))
            return err->code;
        kv_tokring_pop(&s->ring);
    }
    size_t nold = last - s->W >= first ? (size_t)(last - s->W - first + 1) : 0;
    if (nold && s->sg_ops->ingest(s->sg, K, V, first, nold, err)) return err->code;
    for (size_t i = nold; i < n; i++) {
        if (s->ring.count == s->ring.cap) { /* a budgeted ring is full: its oldest goes to SubGen early */
            if (s->sg_ops->ingest(s->sg, kv_tokring_k(&s->ring, 0), kv_tokring_v(&s->ring, 0),
                                  kv_tokring_idx(&s->ring, 0), 1, err))
                return err->code;
            kv_tokring_pop(&s->ring);
        }
        if (kv_tokring_push(&s->ring, K + i * d, V + i * dv, first + (int64_t)i, err)) return err->code;
    }
    return KV_OK;
}

static int wsg_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    wsg_state *s = state;
    int dv = s->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv);
    if (nq <= 0) return KV_OK;
    double *sg = malloc(sizeof(double) * sl * (size_t)nq);
    if (!sg) return KV_EINTERNAL;
    int rc = s->sg_ops->partial(s->sg, Q, nq, p, sg);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    kv_tokring_cost(&s->ring, 0, nq, &s->cost);
    if (!rc) rc = kv_tokring_fold(&s->ring, 0, Q, nq, (float)s->ctx.scale, st);
    for (int q = 0; q < nq && !rc; q++) kv_partial_merge(st + q * sl, sg + q * sl, dv);
    free(sg);
    return rc;
}

static size_t wsg_bytes(const void *state)
{
    const wsg_state *s = state;
    return kv_tokring_bytes(&s->ring) + s->sg_ops->bytes(s->sg);
}

/* the window's reads plus SubGen's (its hook) */
static void wsg_cost(const void *state, kv_query_cost *c)
{
    const wsg_state *s = state;
    *c = (kv_query_cost){ 0, 0, 0 };
    if (s->sg_ops->cost) s->sg_ops->cost(s->sg, c);
    c->read_bytes += s->cost.read_bytes;
    c->read_tokens += s->cost.read_tokens;
    c->flops += s->cost.flops;
}

static void wsg_extra(const void *state, kv_method_extra *x)
{
    const wsg_state *s = state;
    kv_method_extra in = { -1, -1, 0 };
    if (s->sg_ops->extra) s->sg_ops->extra(s->sg, &in);
    x->clusters = in.clusters;
    x->kept_tokens = s->ring.count + (in.kept_tokens > 0 ? in.kept_tokens : 0);
}


/* The ring, then SubGen's own state as one array, so that its loader gets a
 * reader of exactly its bytes. */
static void wsg_save(const void *state, kv_buf *out)
{
    const wsg_state *s = state;
    if (!s->sg_ops->save) { /* save cannot return an error: mark the buffer unusable */
        out->failed = 1;
        return;
    }
    kv_tokring_save(&s->ring, out);
    kv_buf_put_saved(out, s->sg_ops->save, s->sg); /* as an array, without a copy of it */
}

static int wsg_load(void *state, kv_rd *in, kv_err *err)
{
    wsg_state *s = state;
    if (!s->sg_ops->load)
        return kv_seterr(err, KV_EINTERNAL, "checkpoint: window+subgen state: subgen cannot be checkpointed");
    if (kv_tokring_load(&s->ring, in, kv_shard_limit(&s->ctx), s->ctx.n_total, err)) return err->code;
    const kv_tokring *r = &s->ring;
    int64_t len;
    if (r->count && kv_tokring_idx(r, r->count - 1) - kv_tokring_idx(r, 0) >= s->W)
        kv_seterr(err, KV_EINPUT, "checkpoint: window+subgen state holds tokens outside the window");
    else if (!kv_rd_i64(in, &len, err) && (len < 0 || (uint64_t)len > in->len - in->pos))
        kv_seterr(err, KV_EINPUT, "checkpoint: window+subgen state has a bad subgen length");
    kv_rd sub;
    if (err->code || kv_rd_sub(in, (size_t)len, &sub, err)) {
        kv_tokring_free(&s->ring);
        return err->code;
    }
    sub.what = "subgen";
    if (!s->sg_ops->load(s->sg, &sub, err) && sub.pos != sub.len)
        kv_seterr(err, KV_EINPUT, "checkpoint: window+subgen state: subgen state has trailing bytes");
    if (err->code) {
        kv_tokring_free(&s->ring); /* SubGen's load frees its own on failure */
        return err->code;
    }
    return KV_OK;
}

static int64_t wsg_max_bytes(const void *state)
{
    const wsg_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->ring.cap < lim ? s->ring.cap : lim;
    int64_t ring = kv_tokring_max_bytes(s->ctx.d, s->ctx.dv, held);
    /* SubGen without max_bytes: what the replay driver assumes for a method
     * without one (the stream's keys and values), not a true bound */
    int64_t sg = s->sg_ops->max_bytes ? s->sg_ops->max_bytes(s->sg)
                                      : s->ctx.n_total * (int64_t)(s->ctx.d + s->ctx.dv) * (int64_t)sizeof(float);
    return ring + sg;
}

const kv_method_ops kv_method_window_subgen = {
    .name = "window+subgen",
    .kind = "sketch",
    .summary = "the last W tokens exactly, a SubGen sketch of the older ones",
    .budget = "W tokens plus SubGen's; budget=X: half to the window, half to SubGen",
    .params = wsg_params,
    .cfg_size = sizeof(wsg_cfg),
    .check = wsg_check,
    .create = wsg_create,
    .ingest = wsg_ingest,
    .partial = wsg_partial,
    .bytes = wsg_bytes,
    .extra = wsg_extra,
    .cost = wsg_cost,
    .free = wsg_free,
    .save = wsg_save,
    .load = wsg_load,
    .max_bytes = wsg_max_bytes,
    .conform = { "W=60,delta=1,t=4,s=8;W=200,delta=0.5,t=8,s=16,seed=3", KV_PINV_NO },
};
