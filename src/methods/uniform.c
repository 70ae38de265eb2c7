/* uniform.c - uniform:tokens=<k> | uniform:budget=<X> [,seed=<n>]: a
 * uniform sample of k tokens of the prefix (ALGORITHMS.md section 4),
 * the same sample at any rank count.
 *
 * Bottom-k sampling: token i gets the priority u_i = hash(seed, stream, i),
 * a function of its global index only, and the sample at prefix p is the k
 * tokens of [0, p) with the smallest priorities: a uniform k-subset.
 * Every rank can hash every index, so each rank tracks the global k-th
 * smallest priority tau(p) over [0, p) itself (a max-heap of k priorities,
 * advanced at the driver's horizon) and keeps exactly its own tokens with
 * u_i <= tau(p).  The ranks together hold the k sampled tokens at every
 * prefix, and the sample (so the result, up to float rounding in the
 * merge) does not depend on P.  A sampled token stands for p/k tokens: the
 * partial state weights it by that factor in l and u (a ratio estimator).
 *
 * What distribution costs: every rank holds the k-priority heap (8 bytes
 * per sampled token per rank), reported in bytes().
 *
 * budget=X: k = what fits in X with the heaps of all P ranks: a held row
 * plus P heap entries per sampled token, after a reserve of one page per
 * rank.  So under a budget the distribution cost is paid in samples (k
 * shrinks by 8 (P - 1) bytes per token: 0.8% per extra rank at d = dv = 128),
 * and the sample, while the same kind, is not the same at every P;
 * tokens=k gives the same sample at every P and reports the heaps on top.
 *
 * Memory: 16-token pages of held rows (key, value, priority, index), the
 * heap and its counters. */
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/partial.h"
#include "methods/method.h"
#include "methods/common/rowpool.h"

#define UNIFORM_SALT 0x756e69666f726dULL /* "uniform" */

typedef struct {
    kv_method_ctx ctx;
    int64_t k;
    uint64_t seed;
    int64_t front;     /* priorities of [0, front) are in the heap */
    int64_t hn;        /* heap entries (<= k) */
    uint64_t *heap;    /* max-heap of the k smallest priorities; k entries */
    kv_rowpool pool;   /* this rank's sampled tokens, tag = priority */
    kv_query_cost cost; /* method.h: cost */
} uniform_state;

typedef struct { int64_t tokens, seed; kv_budget budget; } uniform_cfg;
KV_CFG_FITS(uniform_cfg);

static const kv_param_def uniform_params[] = {
    KV_PARAM_INT(uniform_cfg, tokens, 1024, 1, INT64_C(1) << 40, "tokens sampled, over all ranks (k)"),
    KV_PARAM_INT_DERIVED(uniform_cfg, seed, -1, "--seed", 0, INT64_MAX, "sample seed (the stream is mixed in)"),
    KV_PARAM_BUDGET(uniform_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: k = what fits"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_uniform;

static int uniform_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    const uniform_cfg *c = cfg;
    if (c->budget.kind && kv_spec_has(spec, "tokens"))
        return kv_params_error(uniform_params, spec, err, "give tokens or budget, not both");
    return KV_OK;
}

/* a held row, one heap entry per rank and, at worst, two page-table slots per page */
static int64_t per_token(int d, int dv, int P)
{
    return kv_rowpool_row_bytes(d, dv) + (int64_t)sizeof(uint64_t) * P +
           (2 * (int64_t)sizeof(kv_rowpage) + KV_ROWPOOL_PAGE - 1) / KV_ROWPOOL_PAGE;
}
/* per rank: a part-filled page, a small page table, the counters */
static int64_t reserve(int d, int dv, int P)
{
    return P * (KV_ROWPOOL_PAGE * kv_rowpool_row_bytes(d, dv) + 8 * (int64_t)sizeof(kv_rowpage) + 64);
}

static int uniform_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const uniform_cfg *c = kv_method_cfg(&kv_method_uniform, spec, err);
    if (!c) return err->code;
    int64_t k = c->tokens;
    if (c->budget.kind) {
        int P = ctx->nranks > 0 ? ctx->nranks : 1;
        int64_t B = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv), rest = B - reserve(ctx->d, ctx->dv, P);
        k = rest > 0 ? rest / per_token(ctx->d, ctx->dv, P) : 0;
        if (k < 1)
            return kv_params_error(uniform_params, spec, err, "budget of %lld bytes does not hold one sample (%lld bytes "
                                   "needed at %d ranks)", (long long)B,
                                   (long long)(reserve(ctx->d, ctx->dv, P) + per_token(ctx->d, ctx->dv, P)), P);
    }
    if (k > ctx->n_total) k = ctx->n_total; /* no more samples than tokens */
    if (k < 1) k = 1;
    uniform_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->k = k;
    s->seed = c->seed < 0 ? ctx->seed : (uint64_t)c->seed;
    s->heap = kv_malloc(sizeof(uint64_t) * (size_t)k, err);
    if (!s->heap) { free(s); return err->code; }
    kv_rowpool_init(&s->pool, ctx->d, ctx->dv);
    *out = s;
    return KV_OK;
}

static uint64_t prio(const uniform_state *s, int64_t i)
{
    return kv_hash4(s->seed, (uint64_t)s->ctx.stream, (uint64_t)i, UNIFORM_SALT);
}

static void sift_down(uint64_t *h, int64_t n, int64_t i)
{
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l] > h[m]) m = l;
        if (r < n && h[r] > h[m]) m = r;
        if (m == i) return;
        uint64_t t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

static void sift_up(uint64_t *h, int64_t i)
{
    while (i > 0 && h[(i - 1) / 2] < h[i]) {
        uint64_t t = h[i]; h[i] = h[(i - 1) / 2]; h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

/* tau: the largest priority still in the sample (all while fewer than k) */
static uint64_t tau(const uniform_state *s) { return s->hn < s->k ? UINT64_MAX : s->heap[0]; }

/* the heap over [0, p), then drop held tokens no longer in the sample */
static void advance(uniform_state *s, int64_t p)
{
    if (p > s->ctx.n_total) p = s->ctx.n_total;
    if (p <= s->front) return;
    uint64_t t0 = tau(s);
    for (int64_t i = s->front; i < p; i++) {
        uint64_t u = prio(s, i);
        if (s->hn < s->k) {
            s->heap[s->hn] = u;
            sift_up(s->heap, s->hn++);
        } else if (u < s->heap[0]) {
            s->heap[0] = u;
            sift_down(s->heap, s->hn, 0);
        }
    }
    s->front = p;
    uint64_t t = tau(s);
    if (t == t0) return;
    for (int64_t r = s->pool.count - 1; r >= 0; r--)
        if (kv_rowpool_tag(&s->pool, r) > t) kv_rowpool_remove(&s->pool, r);
}

static void uniform_horizon(void *state, int64_t p) { advance(state, p); }

static int uniform_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    uniform_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    /* the driver's horizon has put the heap past this block already;
     * a caller without one gets the block's own prefix */
    advance(s, first + (int64_t)n);
    uint64_t t = tau(s);
    for (size_t i = 0; i < n; i++) {
        uint64_t u = prio(s, first + (int64_t)i);
        if (u <= t && kv_rowpool_add(&s->pool, K + i * d, V + i * dv, u, first + (int64_t)i, err)) return err->code;
    }
    return KV_OK;
}

static int uniform_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    uniform_state *s = state;
    int dv = s->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv);
    advance(s, p);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    if (!s->pool.count || nq <= 0) return KV_OK;
    double n = (double)s->pool.count, row = s->ctx.d + s->ctx.dv;
    kv_cost_add(&s->cost, nq, 4.0 * n * row, n, 2.0 * n * row); /* a key and a value per sample */
    int rc = kv_rowpool_fold(&s->pool, Q, nq, (float)s->ctx.scale, st);
    if (rc) return rc;
    /* min(k, p) tokens are sampled over all ranks: each stands for p / that many */
    double w = (double)p / (double)(s->k < p ? s->k : p);
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
    return kv_rowpool_bytes(&s->pool) + sizeof(uint64_t) * (size_t)s->k + 2 * sizeof(int64_t);
}

static void uniform_cost(const void *state, kv_query_cost *c)
{
    *c = ((const uniform_state *)state)->cost;
}

static void uniform_extra(const void *state, kv_method_extra *x)
{
    const uniform_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->pool.count;
}

static void uniform_free(void *state)
{
    uniform_state *s = state;
    if (!s) return;
    kv_rowpool_free(&s->pool);
    free(s->heap);
    free(s);
}

/* front, the heap as laid out, and the held rows in order */
static void uniform_save(const void *state, kv_buf *out)
{
    const uniform_state *s = state;
    kv_buf_put_i64(out, s->front);
    kv_buf_put_arr(out, s->heap, sizeof(uint64_t) * (size_t)s->hn);
    kv_rowpool_save(&s->pool, out);
}

static int uniform_load(void *state, kv_rd *in, kv_err *err)
{
    uniform_state *s = state;
    int64_t front;
    void *h = NULL;
    size_t hn = 0;
    if (kv_rd_i64(in, &front, err) || kv_rd_arr(in, &h, sizeof(uint64_t), (size_t)s->k, &hn, err)) goto fail;
    int bad = front < 0 || front > s->ctx.n_total || (int64_t)hn != (front < s->k ? front : s->k);
    /* the heap must be the k smallest priorities of [0, front): recompute */
    uniform_state t = *s;
    t.front = 0;
    t.hn = 0;
    t.pool = (kv_rowpool){ .d = s->ctx.d, .dv = s->ctx.dv };
    if (!bad) {
        advance(&t, front);
        bad = hn && memcmp(t.heap, h, sizeof(uint64_t) * hn) != 0; /* h is NULL when empty */
    }
    if (bad) {
        kv_seterr(err, KV_EINPUT, "checkpoint: uniform state is inconsistent");
        goto fail;
    }
    if (kv_rowpool_load(&s->pool, in, s->k < kv_shard_limit(&s->ctx) ? s->k : kv_shard_limit(&s->ctx),
                        s->ctx.n_total, err))
        goto fail;
    for (int64_t r = 0; r < s->pool.count; r++)
        if (kv_rowpool_tag(&s->pool, r) != prio(s, kv_rowpool_idx(&s->pool, r)) ||
            kv_rowpool_tag(&s->pool, r) > tau(&t) || kv_rowpool_idx(&s->pool, r) >= front) {
            kv_rowpool_free(&s->pool);
            kv_seterr(err, KV_EINPUT, "checkpoint: uniform state holds a token outside its sample");
            goto fail;
        }
    s->front = front;
    s->hn = (int64_t)hn;
    free(h);
    return KV_OK;
fail:
    free(h);
    return err->code;
}

static int64_t uniform_max_bytes(const void *state)
{
    const uniform_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->k < lim ? s->k : lim;
    return kv_rowpool_max_bytes(s->ctx.d, s->ctx.dv, held) + (int64_t)sizeof(uint64_t) * s->k + 16;
}

const kv_method_ops kv_method_uniform = {
    .name = "uniform",
    .kind = "sampling",
    .summary = "a uniform sample of k tokens of the prefix (bottom-k priorities), each weighted p/k",
    .budget = "k tokens over all ranks, plus each rank's k-entry priority heap (budget=X: k from X)",
    .params = uniform_params,
    .cfg_size = sizeof(uniform_cfg),
    .check = uniform_check,
    .create = uniform_create,
    .horizon = uniform_horizon,
    .ingest = uniform_ingest,
    .partial = uniform_partial,
    .bytes = uniform_bytes,
    .extra = uniform_extra,
    .cost = uniform_cost,
    .free = uniform_free,
    .save = uniform_save,
    .load = uniform_load,
    .max_bytes = uniform_max_bytes,
    .conform = { "tokens=150;tokens=1000000,seed=7", KV_PINV_ROUNDING },
};
