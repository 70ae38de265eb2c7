/* topk.c - topk:k=<tokens>: attention restricted to the k largest
 * logits over the whole cache (ALGORITHMS.md section 4).  Not a compression
 * method: it holds every key and value like exact and is a reference for how
 * much of the attention the top logits carry.
 *
 * Sharding: exact global top-k needs a cross-rank selection per query, which
 * the one-reduction design does not have.  Each rank therefore answers with
 * ITS OWN top k (k is per rank, not split), and the merge is attention over
 * the union of the per-rank top-k sets: at most P*k tokens, a superset of the
 * global top-k, so the attention mass it captures is at least that of the
 * global top-k.  With one rank it is exactly the global top-k.  Ties at the
 * k-th logit go to the older token, so results are deterministic.
 *
 * Memory: held tokens x (d + dv) floats (everything, as exact). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "methods/method.h"
#include "kernels/partial.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t k;
    float *K, *V;
    size_t n, cap;
} topk_state;

typedef struct { int64_t k; } topk_cfg;
KV_CFG_FITS(topk_cfg);

static const kv_param_def topk_params[] = {
    KV_PARAM_INT(topk_cfg, k, 64, 1, INT64_MAX, "largest logits per query and rank attended to"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_topk;

static int topk_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const topk_cfg *c = kv_method_cfg(&kv_method_topk, spec, err);
    if (!c) return err->code;
    int64_t k = c->k;
    topk_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->k = k;
    *out = s;
    return KV_OK;
}

static int topk_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    topk_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    (void)first; /* rows are in stream order: row order breaks ties */
    if (s->n + n > s->cap) {
        size_t nc = s->cap ? s->cap : 1024;
        while (nc < s->n + n) nc *= 2;
        float *Kn = realloc(s->K, sizeof(float) * d * nc);
        if (Kn) s->K = Kn;
        float *Vn = realloc(s->V, sizeof(float) * dv * nc);
        if (Vn) s->V = Vn;
        if (!Kn || !Vn) return kv_seterr(err, KV_EINTERNAL, "topk: out of memory holding %zu tokens", s->n + n);
        s->cap = nc;
    }
    memcpy(s->K + s->n * d, K, sizeof(float) * d * n);
    memcpy(s->V + s->n * dv, V, sizeof(float) * dv * n);
    s->n += n;
    return KV_OK;
}

static void swapf(float *a, float *b) { float t = *a; *a = *b; *b = t; }

static float median3(float a, float b, float c)
{
    if (a > b) { float t = a; a = b; b = t; }
    return c < a ? a : c > b ? b : c;
}

/* The k-th largest of x[0..n) (1 <= k <= n); reorders x.  Quickselect with
 * a three-way partition, so runs of equal logits cannot stall it. */
static float kth_largest(float *x, size_t n, size_t k)
{
    size_t lo = 0, hi = n, want = k - 1; /* rank sought in descending order */
    while (hi - lo > 1) {
        float piv = median3(x[lo], x[lo + (hi - lo) / 2], x[hi - 1]);
        /* [lo, gt) > piv, [gt, i) == piv, [lt, hi) < piv */
        size_t gt = lo, i = lo, lt = hi;
        while (i < lt) {
            if (x[i] > piv) swapf(&x[i++], &x[gt++]);
            else if (x[i] < piv) swapf(&x[i], &x[--lt]);
            else i++;
        }
        if (want < gt) hi = gt;
        else if (want >= lt) lo = lt;
        else return piv;
    }
    return x[lo];
}

/* One query: fold the top k (or all) held tokens into st. */
static int topk_one(const topk_state *s, const float *q, double *st)
{
    int d = s->ctx.d, dv = s->ctx.dv;
    size_t n = s->n;
    float *a = malloc(sizeof(float) * n * 2);
    if (!a) return KV_EINTERNAL;
    float *tmp = a + n;
    float scale = (float)s->ctx.scale;
    for (size_t t = 0; t < n; t++) {
        const float *k = s->K + t * d;
        float dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int c = 0; c < d; c++) dot += q[c] * k[c];
        a[t] = dot * scale;
    }
    size_t k = (size_t)s->k < n ? (size_t)s->k : n;
    memcpy(tmp, a, sizeof(float) * n);
    float thr = kth_largest(tmp, n, k);
    size_t above = 0;
    float m = -INFINITY;
    for (size_t t = 0; t < n; t++) {
        above += a[t] > thr;
        m = a[t] > m ? a[t] : m;
    }
    size_t ties = k - above; /* tokens at the threshold to take, oldest first */
    double l = 0, l2 = 0, *u = st + KV_PS_U;
    for (size_t t = 0; t < n; t++) {
        if (a[t] < thr || (a[t] == thr && ties == 0)) continue;
        if (a[t] == thr) ties--;
        double e = exp((double)a[t] - (double)m);
        const float *v = s->V + t * dv;
        l += e;
        l2 += e * e;
        for (int c = 0; c < dv; c++) u[c] += e * v[c];
    }
    st[KV_PS_M] = m;
    st[KV_PS_L] = l;
    st[KV_PS_L2] = l2;
    free(a);
    return KV_OK;
}

static int topk_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    topk_state *s = state;
    int dv = s->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv);
    (void)p; /* every held token is < p */
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    if (!s->n || nq <= 0) return KV_OK;
    int bad = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad) if (nq > 1 && !omp_in_parallel())
    for (int q = 0; q < nq; q++) bad |= topk_one(s, Q + (size_t)q * s->ctx.d, st + q * sl) != KV_OK;
    return bad ? KV_EINTERNAL : KV_OK;
}

static size_t topk_bytes(const void *state)
{
    const topk_state *s = state;
    return s->n * (size_t)(s->ctx.d + s->ctx.dv) * sizeof(float);
}

static void topk_extra(const void *state, kv_method_extra *x)
{
    const topk_state *s = state;
    x->clusters = -1;
    x->kept_tokens = (int64_t)s->n;
}

static void topk_free(void *state)
{
    topk_state *s = state;
    if (!s) return;
    free(s->K);
    free(s->V);
    free(s);
}


/* Rows in stream order, as held: the order breaks ties at the k-th logit. */
static void topk_save(const void *state, kv_buf *out)
{
    const topk_state *s = state;
    kv_buf_put_arr(out, s->K, s->n * (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_arr(out, s->V, s->n * (size_t)s->ctx.dv * sizeof(float));
}

static int topk_load(void *state, kv_rd *in, kv_err *err)
{
    topk_state *s = state;
    void *K = NULL, *V = NULL;
    size_t nk = 0, nv = 0, lim = (size_t)kv_shard_limit(&s->ctx);
    if (kv_rd_arr(in, &K, sizeof(float) * (size_t)s->ctx.d, lim, &nk, err) ||
        kv_rd_arr(in, &V, sizeof(float) * (size_t)s->ctx.dv, lim, &nv, err) || nk != nv ||
        !kv_all_finite(K, nk * (size_t)s->ctx.d) || !kv_all_finite(V, nv * (size_t)s->ctx.dv)) {
        free(K);
        free(V);
        return err->code ? err->code : kv_seterr(err, KV_EINPUT, "checkpoint: topk state is inconsistent");
    }
    free(s->K);
    free(s->V);
    s->K = K;
    s->V = V;
    s->n = s->cap = nk;
    return KV_OK;
}

static int64_t topk_max_bytes(const void *state)
{
    const topk_state *s = state;
    return kv_shard_limit(&s->ctx) * (int64_t)(s->ctx.d + s->ctx.dv) * (int64_t)sizeof(float);
}

const kv_method_ops kv_method_topk = {
    .name = "topk",
    .kind = "oracle",
    .summary = "exact attention over the k largest logits per rank (a reference, not a compression)",
    .budget = NULL,
    .params = topk_params,
    .cfg_size = sizeof(topk_cfg),
    .create = topk_create,
    .ingest = topk_ingest,
    .partial = topk_partial,
    .bytes = topk_bytes,
    .extra = topk_extra,
    .free = topk_free,
    .save = topk_save,
    .load = topk_load,
    .max_bytes = topk_max_bytes,
};
