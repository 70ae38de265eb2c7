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
 * share of [p-W, p)).  W is global; delta, t and s are per-rank SubGen
 * parameters, as for a plain subgen.  Full-attention semantics only (SubGen
 * refuses the others).
 *
 * Memory: held tokens x ((d + dv) floats + int64 index) + SubGen's bytes(). */
#include <stdlib.h>
#include "methods/method.h"
#include "kernels/partial.h"
#include "methods/subgen.h"
#include "methods/tokring.h"

typedef struct {
    int64_t W;
    kv_subgen_cfg sg;
} wsg_cfg;
KV_CFG_FITS(wsg_cfg);

/* W, then SubGen's own entries (shared, not copied) */
static const kv_param_def wsg_params[] = {
    KV_PARAM_INT(wsg_cfg, W, 1024, 1, INT64_MAX, "recent tokens kept exactly (global; at most W per rank)"),
    KV_PARAM_INCLUDE(wsg_cfg, sg, kv_subgen_params),
    KV_PARAM_TABLE_END
};

typedef struct {
    kv_method_ctx ctx;
    int64_t W;
    kv_tokring ring;
    const kv_method_ops *sg_ops;
    void *sg;
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
    kv_tokring_init(&s->ring, ctx->d, ctx->dv, c->W);
    int rc = kv_subgen_new(&c->sg, spec->text, ctx, &s->sg, err);
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
    for (size_t i = nold; i < n; i++)
        if (kv_tokring_push(&s->ring, K + i * d, V + i * dv, first + (int64_t)i, err)) return err->code;
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

static void wsg_extra(const void *state, kv_method_extra *x)
{
    const wsg_state *s = state;
    kv_method_extra in = { -1, -1 };
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
    kv_buf inner;
    kv_buf_init(&inner);
    s->sg_ops->save(s->sg, &inner);
    if (inner.failed) out->failed = 1;
    else kv_buf_put_arr(out, inner.data, inner.len);
    kv_buf_free(&inner);
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
    if (err->code) {
        kv_tokring_free(&s->ring);
        return err->code;
    }
    kv_rd sub = { .data = in->data + in->pos, .len = (size_t)len, .pos = 0, .what = "subgen" };
    if (!s->sg_ops->load(s->sg, &sub, err) && sub.pos != sub.len)
        kv_seterr(err, KV_EINPUT, "checkpoint: window+subgen state: subgen state has trailing bytes");
    if (err->code) {
        kv_tokring_free(&s->ring); /* SubGen's load frees its own on failure */
        return err->code;
    }
    in->pos += (size_t)len;
    return KV_OK;
}

static int64_t wsg_max_bytes(const void *state)
{
    const wsg_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->W < lim ? s->W : lim;
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
    .budget = "W tokens plus SubGen's (per rank)",
    .params = wsg_params,
    .cfg_size = sizeof(wsg_cfg),
    .create = wsg_create,
    .ingest = wsg_ingest,
    .partial = wsg_partial,
    .bytes = wsg_bytes,
    .extra = wsg_extra,
    .free = wsg_free,
    .save = wsg_save,
    .load = wsg_load,
    .max_bytes = wsg_max_bytes,
};
