/* tova.c - tova:tokens=<B> or tova:budget=<X>: TOVA, token omission via
 * attention (Oren et al. 2024, "Transformers are Multi-State RNNs"),
 * ALGORITHMS.md section 4b.
 *
 * Rule.  After each query is answered, every held token's score is its
 * attention weight under that query, normalised by the GLOBAL softmax (the
 * driver's feedback hook gives each rank the merged (m, l)): the mean of
 * exp(a - m) / l over the queries of the call (one call = one position;
 * several queries = the query heads sharing this kv head, which TOVA
 * averages).  Scores are replaced, not accumulated: only the current query
 * counts.  The held count never exceeds the budget: a token arriving when
 * the rank is full is scored under the last query as well (its weight had
 * it been in that softmax: the call's last query row, its merged m and l,
 * are kept for this) and displaces the lowest (score, index) held token
 * only if it beats it; before any query every score is 0 and the oldest
 * goes, a window.  TOVA proper scores the new token under the next query,
 * which sees it; here queries are sparse and tokens must be dropped before
 * the next query arrives, so the last one stands in for it.
 *
 * Global budget.  B tokens over all ranks together, shared as h2o shares its
 * heavy-hitter slots: at each horizon, the prefix p' reached so far fixes a
 * rank's share until the next horizon as floor(seen * B / p'), seen = the
 * rank's tokens < p' (before any token floor(B * shard / n)), so the shares
 * never sum over B.  Each rank evicts its own lowest tokens: at P > 1 the
 * choice is a split of the global one, close to, not equal to, P = 1.  With
 * B >= n nothing is ever evicted (every rank may hold its whole shard) and
 * the answers are exact attention.  budget=X: B = floor((bytes(X) - P q) /
 * slot), q the kept query row (d floats, m, l) every rank holds, slot the
 * per-token bytes below; tokens= and budget= exclude each other.
 *
 * Memory: allocated slots x ((d + dv) floats + index + score + two int32
 * (heap position, heap)) + the query row; the arrays are resized to the
 * slots in use after every horizon and ingest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/dot.h"
#include "kernels/held.h"
#include "kernels/partial.h"
#include "methods/method.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t B;            /* global token budget */
    int64_t share;        /* this rank's slots now */
    int64_t hlast;        /* last horizon: every rank has ingested its tokens < hlast */
    int64_t seen;         /* tokens ingested */
    int64_t held, cap;    /* slots in use (0..held-1), allocated */
    float *K, *V;
    int64_t *idx;
    double *score;
    int32_t *pos;         /* position of each slot in heap */
    int32_t *heap;        /* min-heap of slots by (score, index) */
    int64_t hsize;        /* == held */
    int have_q;           /* a query has been answered */
    float *lq;            /* its last row (d floats) */
    double lm, ll;        /* and its merged max and sum */
} tova_state;

typedef struct {
    int64_t tokens;
    kv_budget budget;
} tova_cfg;
KV_CFG_FITS(tova_cfg);

static const kv_param_def tova_params[] = {
    KV_PARAM_INT(tova_cfg, tokens, 1024, 1, INT32_MAX, "tokens held over all ranks together"),
    KV_PARAM_BUDGET(tova_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_TABLE_END
};

static int64_t slot_bytes(int d, int dv)
{
    return (int64_t)(d + dv) * (int64_t)sizeof(float) + (int64_t)sizeof(int64_t) + (int64_t)sizeof(double) +
           2 * (int64_t)sizeof(int32_t);
}

static int64_t query_bytes(int d)
{
    return (int64_t)d * (int64_t)sizeof(float) + 2 * (int64_t)sizeof(double);
}

static int tova_cfg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    tova_cfg *c = cfg;
    if (c->budget.kind != KV_BUDGET_NONE && kv_spec_has(spec, "tokens"))
        return kv_params_error(tova_params, spec, err, "give tokens= or budget=, not both");
    return KV_OK;
}

extern const kv_method_ops kv_method_tova;

/* share before any token was seen: by shard size */
static int64_t first_share(const kv_method_ctx *ctx, int64_t B)
{
    if (ctx->shard_tokens > 0 && ctx->n_total > 0)
        return (int64_t)((__int128)B * ctx->shard_tokens / ctx->n_total);
    return B / (ctx->nranks > 0 ? ctx->nranks : 1);
}

static int tova_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const tova_cfg *c = kv_method_cfg(&kv_method_tova, spec, err);
    if (!c) return err->code;
    int64_t B = c->tokens;
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes(ctx->d, ctx->dv), bytes = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv);
        int64_t rest = bytes - (int64_t)(ctx->nranks > 0 ? ctx->nranks : 1) * query_bytes(ctx->d);
        B = rest > 0 ? rest / per : 0;
        if (B < 1)
            return kv_params_error(tova_params, spec, err,
                                   "budget of %lld bytes holds no token (one takes %lld, plus %lld per rank)",
                                   (long long)bytes, (long long)per, (long long)query_bytes(ctx->d));
        if (B > INT32_MAX)
            return kv_params_error(tova_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
    }
    tova_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->B = B;
    s->share = B >= ctx->n_total ? B : first_share(ctx, B);
    s->lq = kv_calloc((size_t)(ctx->d > 0 ? ctx->d : 1), sizeof(float), err);
    if (!s->lq) {
        free(s);
        return err->code;
    }
    *out = s;
    return KV_OK;
}

static void free_arrays(tova_state *s)
{
    free(s->K); free(s->V); free(s->idx); free(s->score); free(s->pos); free(s->heap);
    s->K = s->V = NULL; s->idx = NULL; s->score = NULL; s->pos = s->heap = NULL;
    s->cap = 0;
}

/* Resize every per-slot array to rows (>= held). */
static int resize(tova_state *s, int64_t rows)
{
    if (rows == s->cap) return KV_OK;
    if (rows == 0) {
        free_arrays(s);
        return KV_OK;
    }
    size_t N = (size_t)rows;
    int bad = 0;
#define RE(p, per) do { void *q = realloc(p, sizeof *(p) * (per) * N); if (q) p = q; else bad = 1; } while (0)
    RE(s->K, (size_t)s->ctx.d);
    RE(s->V, (size_t)s->ctx.dv);
    RE(s->idx, 1);
    RE(s->score, 1);
    RE(s->pos, 1);
    RE(s->heap, 1);
#undef RE
    /* a failed grow leaves every array >= the old cap; a shrink keeps >= rows */
    if (bad && rows > s->cap) return KV_EINTERNAL;
    s->cap = rows;
    return KV_OK;
}

/* ---- min-heap of slots by (score, index) ---- */
static int before(const tova_state *s, int32_t a, int32_t b)
{
    return s->score[a] < s->score[b] || (s->score[a] == s->score[b] && s->idx[a] < s->idx[b]);
}

static void put(tova_state *s, int64_t i, int32_t slot)
{
    s->heap[i] = slot;
    s->pos[slot] = (int32_t)i;
}

static void sift_down(tova_state *s, int64_t i)
{
    int32_t x = s->heap[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= s->hsize) break;
        if (c + 1 < s->hsize && before(s, s->heap[c + 1], s->heap[c])) c++;
        if (!before(s, s->heap[c], x)) break;
        put(s, i, s->heap[c]);
        i = c;
    }
    put(s, i, x);
}

static void push(tova_state *s, int32_t slot)
{
    int64_t i = s->hsize++;
    while (i > 0 && before(s, slot, s->heap[(i - 1) / 2])) {
        put(s, i, s->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    put(s, i, slot);
}

static int32_t pop(tova_state *s)
{
    int32_t top = s->heap[0];
    if (--s->hsize > 0) {
        put(s, 0, s->heap[s->hsize]);
        sift_down(s, 0);
    }
    return top;
}

/* Free slot x (out of the heap): the last slot moves into it. */
static void drop(tova_state *s, int32_t x)
{
    int32_t last = (int32_t)--s->held;
    if (x == last) return;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    memcpy(s->K + x * d, s->K + last * d, sizeof(float) * d);
    memcpy(s->V + x * dv, s->V + last * dv, sizeof(float) * dv);
    s->idx[x] = s->idx[last];
    s->score[x] = s->score[last];
    put(s, s->pos[last], x);
}

static void tova_horizon(void *state, int64_t p)
{
    tova_state *s = state;
    if (p < s->hlast) return; /* not the driver's promise: ignore */
    /* every rank has ingested exactly its tokens < hlast: shares sum to <= B */
    if (s->hlast > 0 && s->B < s->ctx.n_total) s->share = (int64_t)((__int128)s->seen * s->B / s->hlast);
    s->hlast = p;
    while (s->held > s->share) drop(s, pop(s));
    resize(s, s->held); /* shrinking cannot fail for good (resize keeps the old blocks) */
}

static double logit(const tova_state *s, const float *q, const float *k)
{
    return (double)(kv_dot_fixed(q, k, s->ctx.d) * (float)s->ctx.scale);
}

/* an arriving token's score: its weight under the last query */
static double arrival_score(const tova_state *s, const float *k)
{
    if (!s->have_q || !(s->ll > 0)) return 0.0;
    return exp(logit(s, s->lq, k) - s->lm) / s->ll;
}

static void copy_in(tova_state *s, int32_t slot, const float *k, const float *v, int64_t t, double sc)
{
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    memcpy(s->K + slot * d, k, sizeof(float) * d);
    memcpy(s->V + slot * dv, v, sizeof(float) * dv);
    s->idx[slot] = t;
    s->score[slot] = sc;
}

static int tova_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    tova_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    int64_t need = s->held + (int64_t)n;
    if (need > s->share) need = s->share > s->held ? s->share : s->held;
    if (need > s->cap && resize(s, need))
        return kv_seterr(err, KV_EINTERNAL, "tova: out of memory holding %lld tokens", (long long)need);
    for (size_t i = 0; i < n; i++) {
        int64_t t = first + (int64_t)i;
        double sc = arrival_score(s, K + i * d);
        if (s->held < s->share) {
            int32_t slot = (int32_t)s->held++;
            copy_in(s, slot, K + i * d, V + i * dv, t, sc);
            push(s, slot);
        } else if (s->hsize > 0 && sc >= s->score[s->heap[0]]) { /* (sc, t) beats (sc, older) */
            int32_t slot = pop(s);
            copy_in(s, slot, K + i * d, V + i * dv, t, sc);
            push(s, slot);
        }
    }
    s->seen += (int64_t)n;
    resize(s, s->held);
    return KV_OK;
}

static int tova_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    const tova_state *s = state;
    (void)p; /* every held token is < p */
    return kv_attn_held(Q, nq, s->K, s->V, (size_t)s->held, s->ctx.d, s->ctx.dv, s->ctx.scale, st);
}

/* Scores = the mean global attention weight under the call's queries; the
 * last query row is kept to score arrivals. */
static int tova_feedback(void *state, const float *Q, int nq, int64_t p, const double *ml)
{
    tova_state *s = state;
    size_t n = (size_t)s->held, d = (size_t)s->ctx.d;
    (void)p;
    if (nq <= 0) return KV_OK;
    for (size_t t = 0; t < n; t++) {
        double sum = 0;
        for (int q = 0; q < nq; q++) {
            double m = ml[2 * q], l = ml[2 * q + 1];
            if (l > 0) sum += exp(logit(s, Q + (size_t)q * d, s->K + t * d) - m) / l;
        }
        s->score[t] = sum / nq;
    }
    for (int64_t i = s->hsize / 2 - 1; i >= 0; i--) sift_down(s, i);
    memcpy(s->lq, Q + (size_t)(nq - 1) * d, sizeof(float) * d);
    s->lm = ml[2 * (nq - 1)];
    s->ll = ml[2 * (nq - 1) + 1];
    s->have_q = 1;
    return KV_OK;
}

static size_t tova_bytes(const void *state)
{
    const tova_state *s = state;
    return (size_t)s->cap * (size_t)slot_bytes(s->ctx.d, s->ctx.dv) + (size_t)query_bytes(s->ctx.d);
}

static void tova_extra(const void *state, kv_method_extra *x)
{
    const tova_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->held;
}

static void tova_free(void *state)
{
    tova_state *s = state;
    if (!s) return;
    free_arrays(s);
    free(s->lq);
    free(s);
}

/* Counters, the last query, then the slots as held (partial sums over them
 * in slot order), their scores and the heap as laid out (ties and sift
 * order decide later evictions).  pos follows from the heap. */
static void tova_save(const void *state, kv_buf *out)
{
    const tova_state *s = state;
    size_t n = (size_t)s->held;
    kv_buf_put_i64(out, s->share);
    kv_buf_put_i64(out, s->hlast);
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_i64(out, s->have_q);
    kv_buf_put_arr(out, s->lq, (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_f64(out, s->lm);
    kv_buf_put_f64(out, s->ll);
    kv_buf_put_arr(out, s->K, n * (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_arr(out, s->V, n * (size_t)s->ctx.dv * sizeof(float));
    kv_buf_put_arr(out, s->idx, n * sizeof(int64_t));
    kv_buf_put_arr(out, s->score, n * sizeof(double));
    kv_buf_put_arr(out, s->heap, n * sizeof(int32_t));
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* What horizon, ingest and feedback maintain: counters in range, indices
 * distinct and below what was seen, finite keys, values and scores >= 0, a
 * valid heap over every slot.  Sets pos; sorted is scratch. */
static int tova_valid(tova_state *s, int64_t *sorted)
{
    int64_t n = s->held, lim = kv_shard_limit(&s->ctx);
    if (s->share < 0 || s->share > s->B || n > s->share || s->hlast < 0 || s->hlast > s->ctx.n_total ||
        s->seen < n || s->seen > lim || (s->have_q != 0 && s->have_q != 1))
        return 0;
    /* the last query: nothing before the first (all zero); then finite, and
     * its merged (m, l) with l >= 0 and m finite iff l > 0 (else -inf) */
    if (!kv_all_finite(s->lq, (size_t)s->ctx.d) || !isfinite(s->ll) || !(s->ll >= 0)) return 0;
    if (s->have_q ? (s->ll > 0 ? !isfinite(s->lm) : s->lm != -INFINITY) : s->lm != 0 || s->ll != 0) return 0;
    for (int c = 0; !s->have_q && c < s->ctx.d; c++)
        if (s->lq[c] != 0) return 0;
    if (!n) return 1;
    for (int64_t i = 0; i < n; i++)
        if (s->idx[i] < 0 || s->idx[i] >= s->ctx.n_total || !isfinite(s->score[i]) || s->score[i] < 0) return 0;
    if (!kv_all_finite(s->K, (size_t)n * (size_t)s->ctx.d) || !kv_all_finite(s->V, (size_t)n * (size_t)s->ctx.dv)) return 0;
    memcpy(sorted, s->idx, sizeof(int64_t) * (size_t)n);
    qsort(sorted, (size_t)n, sizeof(int64_t), cmp_i64);
    for (int64_t i = 1; i < n; i++)
        if (sorted[i] == sorted[i - 1]) return 0;
    for (int64_t i = 0; i < n; i++) s->pos[i] = INT32_MIN;
    for (int64_t i = 0; i < n; i++) {
        int32_t x = s->heap[i];
        if (x < 0 || x >= n || s->pos[x] != INT32_MIN) return 0;
        if (i && before(s, x, s->heap[(i - 1) / 2])) return 0;
        s->pos[x] = (int32_t)i;
    }
    return 1;
}

static int tova_load(void *state, kv_rd *in, kv_err *err)
{
    tova_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), hq = 0;
    size_t cap = (size_t)(s->B < lim ? s->B : lim), nq = 0, nk = 0, nv = 0, ni = 0, ns = 0, nh = 0, n;
    void *lq = NULL, *K = NULL, *V = NULL, *idx = NULL, *score = NULL, *heap = NULL;
    int64_t *sorted = NULL;
    tova_state t = *s;
    t.pos = NULL;
    if (kv_rd_i64(in, &t.share, err) || kv_rd_i64(in, &t.hlast, err) || kv_rd_i64(in, &t.seen, err) ||
        kv_rd_i64(in, &hq, err) || kv_rd_arr(in, &lq, sizeof(float), (size_t)s->ctx.d, &nq, err) ||
        kv_rd_f64(in, &t.lm, err) || kv_rd_f64(in, &t.ll, err) ||
        kv_rd_arr(in, &K, sizeof(float) * (size_t)s->ctx.d, cap, &nk, err) ||
        kv_rd_arr(in, &V, sizeof(float) * (size_t)s->ctx.dv, cap, &nv, err) ||
        kv_rd_arr(in, &idx, sizeof(int64_t), cap, &ni, err) || kv_rd_arr(in, &score, sizeof(double), cap, &ns, err) ||
        kv_rd_arr(in, &heap, sizeof(int32_t), cap, &nh, err))
        goto fail;
    n = nk;
    if (nq != (size_t)s->ctx.d || nv != n || ni != n || ns != n || nh != n || hq < 0 || hq > 1)
        goto bad;
    t.pos = malloc(sizeof(int32_t) * (n ? n : 1));
    sorted = malloc(sizeof(int64_t) * (n ? n : 1));
    if (!t.pos || !sorted) {
        kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring tova");
        goto fail;
    }
    t.have_q = (int)hq;
    t.lq = lq;
    t.K = K; t.V = V; t.idx = idx; t.score = score; t.heap = heap;
    t.held = t.cap = t.hsize = (int64_t)n;
    if (!tova_valid(&t, sorted)) goto bad;
    free(sorted);
    free_arrays(s);
    free(s->lq);
    *s = t;
    if (!n) free_arrays(s); /* nothing held: no arrays, as in an uninterrupted run */
    return KV_OK;
bad:
    kv_seterr(err, KV_EINPUT, "checkpoint: tova state is inconsistent");
fail:
    free(lq); free(K); free(V); free(idx); free(score); free(heap); free(sorted);
    free(t.pos);
    return err->code;
}

static int64_t tova_max_bytes(const void *state)
{
    const tova_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->B < lim ? s->B : lim;
    return held * slot_bytes(s->ctx.d, s->ctx.dv) + query_bytes(s->ctx.d);
}

const kv_method_ops kv_method_tova = {
    .name = "tova",
    .kind = "eviction",
    .summary = "TOVA: after each query, drop the held tokens with the lowest attention under it",
    .budget = "tokens= (or budget= bytes) over all ranks together, shared among ranks by the tokens each has seen",
    .params = tova_params,
    .cfg_size = sizeof(tova_cfg),
    .check = tova_cfg_check,
    .create = tova_create,
    .ingest = tova_ingest,
    .partial = tova_partial,
    .horizon = tova_horizon,
    .feedback = tova_feedback,
    .bytes = tova_bytes,
    .extra = tova_extra,
    .free = tova_free,
    .save = tova_save,
    .load = tova_load,
    .max_bytes = tova_max_bytes,
};
