/* h2o.c - h2o:tokens=<B>[,recent=<R>] or h2o:budget=<X>[,recent=<R>]:
 * heavy hitters (H2O, Zhang et al. 2023), ALGORITHMS.md section 4.
 *
 * Global budget.  B tokens are held over all ranks together, whatever their
 * number: the recent part is the R globally newest tokens (indices >= p - R
 * at prefix p: each rank keeps its own tokens in that range), and the
 * remaining H = B - R heavy-hitter slots are split among the ranks by how
 * many of the non-recent tokens each holds: at each horizon p (method.h) a
 * rank's share until the next horizon is
 *     share = floor(H * below / (p - R)),  below = its tokens < p - R
 * (kv_rank_tokens_below, from the driver's chunk), so the shares never sum
 * over H, and with B >= n every rank keeps every token (exact at any P).
 * Without the chunk (ctx->chunk = 0) the split is by what each has seen,
 * floor(seen * H / p') at the previous horizon p' (before any token,
 * floor(H * shard / n)), which starves the ranks holding the early tokens.
 * A rank fills its share with its non-recent tokens of the largest
 * (score, index) and evicts the lowest when the share shrinks.  With one
 * rank this is H2O with budget B exactly; with more, each rank's heavy
 * hitters are its own best, a split of the global choice.  budget=X gives
 * B = floor(bytes(X) / bytes per held token) (core/budget.h; the per-token
 * bytes below, nothing per rank), so the ranks' memory summed stays within
 * X; tokens= and budget= exclude each other; recent defaults to B/2.
 *
 * Scores: a token's score is the attention it received from the queries
 * answered so far, normalised by the global softmax: partial() only answers,
 * and feedback() (the merged (m, l) of every query) adds exp(a - m) / l to
 * each held token, for all queries of a call at once, so answers do not
 * depend on the order of queries within a call (scores only up to rounding).
 *
 * Eviction order: lowest (score, index) first; an arriving non-recent token
 * has score 0 and the newest index, so it displaces only a score-0 token.
 *
 * Memory: held slots x ((d + dv) floats + index + score + three int32
 * (heap position, two heaps)), counted by capacity: the arrays are resized
 * to the slots in use after every horizon and ingest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/dot.h"
#include "methods/method.h"
#include "kernels/held.h"
#include "kernels/partial.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t B, R, H;      /* global: tokens, recent, heavy-hitter slots */
    int64_t share;        /* this rank's heavy-hitter slots now */
    int64_t hz;           /* prefix the recent part is relative to */
    int64_t hlast;        /* last horizon: every rank has ingested its tokens < hlast */
    int64_t seen;         /* tokens ingested */
    int64_t held, cap;    /* slots in use (always 0..held-1), allocated */
    float *K, *V;
    int64_t *idx;
    double *score;
    int32_t *pos;         /* >= 0: position in heap; < 0: -1 - position in rheap */
    int32_t *heap;        /* heavy hitters: min-heap by (score, index) */
    int32_t *rheap;       /* recent tokens: min-heap by index */
    int64_t hsize, rsize;
} h2o_state;

typedef struct {
    int64_t tokens, recent;
    kv_budget budget;
} h2o_cfg;
KV_CFG_FITS(h2o_cfg);

static const kv_param_def h2o_params[] = {
    KV_PARAM_INT(h2o_cfg, tokens, 1024, 1, INT32_MAX, "tokens held over all ranks together"),
    KV_PARAM_INT_DERIVED(h2o_cfg, recent, -1, "tokens/2", 0, INT32_MAX,
                         "of those, the globally newest always kept; <= tokens"),
    KV_PARAM_BUDGET(h2o_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_TABLE_END
};

static int64_t slot_bytes(int d, int dv)
{
    return (int64_t)(d + dv) * (int64_t)sizeof(float) + (int64_t)sizeof(int64_t) + (int64_t)sizeof(double) +
           3 * (int64_t)sizeof(int32_t);
}

static int h2o_cfg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    h2o_cfg *c = cfg;
    if (c->budget.kind != KV_BUDGET_NONE) {
        if (kv_spec_has(spec, "tokens"))
            return kv_params_error(h2o_params, spec, err, "give tokens= or budget=, not both");
        return KV_OK; /* recent is checked in create, once the budget is in tokens */
    }
    if (c->recent < 0) c->recent = c->tokens / 2;
    if (c->recent > c->tokens)
        return kv_params_error(h2o_params, spec, err, "recent=%lld exceeds tokens=%lld", (long long)c->recent,
                               (long long)c->tokens);
    return KV_OK;
}

extern const kv_method_ops kv_method_h2o;

/* heavy-hitter share before any token was seen: by shard size */
static int64_t first_share(const kv_method_ctx *ctx, int64_t H)
{
    if (ctx->shard_tokens > 0 && ctx->n_total > 0)
        return (int64_t)((__int128)H * ctx->shard_tokens / ctx->n_total);
    return H / (ctx->nranks > 0 ? ctx->nranks : 1);
}

static int h2o_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const h2o_cfg *c = kv_method_cfg(&kv_method_h2o, spec, err);
    if (!c) return err->code;
    int64_t B = c->tokens, R = c->recent;
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes(ctx->d, ctx->dv), bytes = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv);
        B = bytes / per;
        if (B < 1)
            return kv_params_error(h2o_params, spec, err, "budget of %lld bytes holds no token (one takes %lld)",
                                   (long long)bytes, (long long)per);
        if (B > INT32_MAX)
            return kv_params_error(h2o_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
        if (R < 0) R = B / 2;
        if (R > B)
            return kv_params_error(h2o_params, spec, err, "recent=%lld exceeds the %lld tokens the budget holds",
                                   (long long)R, (long long)B);
    }
    h2o_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->B = B;
    s->R = R;
    s->H = B - R;
    s->share = first_share(ctx, s->H);
    *out = s;
    return KV_OK;
}

static void free_arrays(h2o_state *s)
{
    free(s->K); free(s->V); free(s->idx); free(s->score); free(s->pos); free(s->heap); free(s->rheap);
    s->K = s->V = NULL; s->idx = NULL; s->score = NULL; s->pos = s->heap = s->rheap = NULL;
    s->cap = 0;
}

/* Resize every per-slot array to rows (>= held). */
static int resize(h2o_state *s, int64_t rows)
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
    RE(s->rheap, 1);
#undef RE
    /* a failed grow leaves every array >= the old cap; after a shrink, even
     * a partly failed one, every array holds >= rows, and some only rows */
    if (bad && rows > s->cap) return KV_EINTERNAL;
    s->cap = rows;
    return KV_OK;
}

/* ---- two min-heaps over slots: w = 0 heavy by (score, index), w = 1 recent by index ---- */
static int before(const h2o_state *s, int w, int32_t a, int32_t b)
{
    if (w) return s->idx[a] < s->idx[b];
    return s->score[a] < s->score[b] || (s->score[a] == s->score[b] && s->idx[a] < s->idx[b]);
}

static void put(h2o_state *s, int w, int64_t i, int32_t slot)
{
    (w ? s->rheap : s->heap)[i] = slot;
    s->pos[slot] = w ? (int32_t)(-1 - i) : (int32_t)i;
}

static void sift_down(h2o_state *s, int w, int64_t i)
{
    int32_t *a = w ? s->rheap : s->heap, x = a[i];
    int64_t n = w ? s->rsize : s->hsize;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && before(s, w, a[c + 1], a[c])) c++;
        if (!before(s, w, a[c], x)) break;
        put(s, w, i, a[c]);
        i = c;
    }
    put(s, w, i, x);
}

static void push(h2o_state *s, int w, int32_t slot)
{
    int32_t *a = w ? s->rheap : s->heap;
    int64_t i = w ? s->rsize++ : s->hsize++;
    while (i > 0 && before(s, w, slot, a[(i - 1) / 2])) {
        put(s, w, i, a[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    put(s, w, i, slot);
}

static int32_t pop(h2o_state *s, int w)
{
    int32_t *a = w ? s->rheap : s->heap, top = a[0];
    int64_t n = w ? --s->rsize : --s->hsize;
    if (n > 0) {
        put(s, w, 0, a[n]);
        sift_down(s, w, 0);
    }
    return top;
}

/* Free slot x (in neither heap): the last slot moves into it. */
static void drop(h2o_state *s, int32_t x)
{
    int32_t last = (int32_t)--s->held;
    if (x == last) return;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    memcpy(s->K + x * d, s->K + last * d, sizeof(float) * d);
    memcpy(s->V + x * dv, s->V + last * dv, sizeof(float) * dv);
    s->idx[x] = s->idx[last];
    s->score[x] = s->score[last];
    int32_t p = s->pos[last];
    if (p >= 0) put(s, 0, p, x);
    else put(s, 1, -1 - (int64_t)p, x);
}

/* The prefix is now p: tokens below p - R leave the recent part and compete
 * as heavy hitters; the lowest go while the heavy part exceeds the share. */
static void advance(h2o_state *s, int64_t p)
{
    if (p > s->hz) s->hz = p;
    while (s->rsize > 0 && s->idx[s->rheap[0]] < s->hz - s->R) push(s, 0, pop(s, 1));
    while (s->hsize > s->share) drop(s, pop(s, 0));
}

static void h2o_horizon(void *state, int64_t p)
{
    h2o_state *s = state;
    if (p < s->hlast) return; /* not the driver's promise: ignore */
    /* shares sum to <= H: by the non-recent tokens of each rank when the
     * sharding is known, else by what each has ingested (its tokens < hlast) */
    int64_t x = p - s->R, below = x > 0 ? kv_rank_tokens_below(&s->ctx, x) : -1;
    if (below >= 0) s->share = (int64_t)((__int128)below * s->H / x);
    else if (s->hlast > 0) s->share = (int64_t)((__int128)s->seen * s->H / s->hlast);
    s->hlast = p;
    advance(s, p);
    resize(s, s->held); /* shrinking cannot fail for good (resize keeps the old blocks) */
}

static void copy_in(h2o_state *s, int32_t slot, const float *k, const float *v, int64_t t)
{
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    memcpy(s->K + slot * d, k, sizeof(float) * d);
    memcpy(s->V + slot * dv, v, sizeof(float) * dv);
    s->idx[slot] = t;
    s->score[slot] = 0.0;
}

static int h2o_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    h2o_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    /* a driver that skipped horizon: the prefix is at least what arrived */
    if (first + (int64_t)n > s->hz) advance(s, first + (int64_t)n);
    int64_t lo = s->hz - s->R, rnew = 0;
    for (size_t i = 0; i < n; i++) rnew += first + (int64_t)i >= lo;
    int64_t hs = s->hsize + ((int64_t)n - rnew);
    if (hs > s->share) hs = s->share;
    int64_t need = s->held + rnew + (hs - s->hsize); /* exactly the slots in use after the block */
    if (need > s->cap && resize(s, need))
        return kv_seterr(err, KV_EINTERNAL, "h2o: out of memory holding %lld tokens", (long long)need);
    for (size_t i = 0; i < n; i++) {
        int64_t t = first + (int64_t)i;
        if (t >= lo) {
            int32_t slot = (int32_t)s->held++;
            copy_in(s, slot, K + i * d, V + i * dv, t);
            push(s, 1, slot);
        } else if (s->hsize < s->share) {
            int32_t slot = (int32_t)s->held++;
            copy_in(s, slot, K + i * d, V + i * dv, t);
            push(s, 0, slot);
        } else if (s->hsize > 0 && s->score[s->heap[0]] <= 0) { /* (0, t) beats (0, older) */
            int32_t slot = pop(s, 0);
            copy_in(s, slot, K + i * d, V + i * dv, t);
            push(s, 0, slot);
        }
    }
    s->seen += (int64_t)n;
    resize(s, s->held);
    return KV_OK;
}


static double logit(const h2o_state *s, const float *q, int64_t t)
{
    return (double)(kv_dot_fixed(q, s->K + (size_t)t * (size_t)s->ctx.d, s->ctx.d) * (float)s->ctx.scale);
}

static int h2o_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    const h2o_state *s = state;
    (void)p; /* every held token is < p */
    return kv_attn_held(Q, nq, s->K, s->V, (size_t)s->held, s->ctx.d, s->ctx.dv, s->ctx.scale, st);
}

/* Scores += the global attention weights of the call's queries (ml: merged
 * m, l per query), added after all of them. */
static int h2o_feedback(void *state, const float *Q, int nq, int64_t p, const double *ml)
{
    h2o_state *s = state;
    size_t n = (size_t)s->held;
    (void)p;
    if (!n || nq <= 0) return KV_OK;
    double *inc = calloc(n, sizeof(double));
    if (!inc) return KV_EINTERNAL;
    for (int q = 0; q < nq; q++) {
        double m = ml[2 * q], l = ml[2 * q + 1];
        if (!(l > 0)) continue; /* no token anywhere */
        for (size_t t = 0; t < n; t++) inc[t] += exp(logit(s, Q + (size_t)q * s->ctx.d, (int64_t)t) - m) / l;
    }
    for (size_t t = 0; t < n; t++) s->score[t] += inc[t];
    for (int64_t i = s->hsize / 2 - 1; i >= 0; i--) sift_down(s, 0, i);
    free(inc);
    return KV_OK;
}

static size_t h2o_bytes(const void *state)
{
    const h2o_state *s = state;
    return (size_t)s->cap * (size_t)slot_bytes(s->ctx.d, s->ctx.dv);
}

static void h2o_extra(const void *state, kv_method_extra *x)
{
    const h2o_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->held;
}

static void h2o_free(void *state)
{
    h2o_state *s = state;
    if (!s) return;
    free_arrays(s);
    free(s);
}

/* Counters, then the slots as held (partial sums over them in slot order),
 * their scores and both heap arrays as laid out (ties and sift order decide
 * later evictions).  pos follows from the heaps. */
static void h2o_save(const void *state, kv_buf *out)
{
    const h2o_state *s = state;
    size_t n = (size_t)s->held;
    kv_buf_put_i64(out, s->share);
    kv_buf_put_i64(out, s->hz);
    kv_buf_put_i64(out, s->hlast);
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_arr(out, s->K, n * (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_arr(out, s->V, n * (size_t)s->ctx.dv * sizeof(float));
    kv_buf_put_arr(out, s->idx, n * sizeof(int64_t));
    kv_buf_put_arr(out, s->score, n * sizeof(double));
    kv_buf_put_arr(out, s->heap, (size_t)s->hsize * sizeof(int32_t));
    kv_buf_put_arr(out, s->rheap, (size_t)s->rsize * sizeof(int32_t));
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* What horizon, ingest and feedback maintain: counters in range; indices
 * distinct, below hz, recent ones >= hz - R and heavy ones below; keys,
 * values and scores finite, scores >= 0; every slot in exactly one heap,
 * both valid heaps.  Sets pos; sorted is scratch for the held indices. */
static int h2o_valid(h2o_state *s, int64_t *sorted)
{
    int64_t n = s->held, lim = kv_shard_limit(&s->ctx);
    if (s->share < 0 || s->share > s->H || s->hsize > s->share || s->rsize > s->R || s->hlast < 0 ||
        s->hz < s->hlast || s->hz > s->ctx.n_total || s->seen < n || s->seen > lim)
        return 0;
    if (!n) return 1;
    for (int64_t i = 0; i < n; i++)
        if (s->idx[i] < 0 || s->idx[i] >= s->hz || !isfinite(s->score[i]) || s->score[i] < 0) return 0;
    if (!kv_all_finite(s->K, (size_t)n * (size_t)s->ctx.d) || !kv_all_finite(s->V, (size_t)n * (size_t)s->ctx.dv)) return 0;
    memcpy(sorted, s->idx, sizeof(int64_t) * (size_t)n);
    qsort(sorted, (size_t)n, sizeof(int64_t), cmp_i64);
    for (int64_t i = 1; i < n; i++)
        if (sorted[i] == sorted[i - 1]) return 0;
    for (int64_t i = 0; i < n; i++) s->pos[i] = INT32_MIN; /* not placed yet */
    for (int w = 0; w < 2; w++) {
        const int32_t *a = w ? s->rheap : s->heap;
        int64_t m = w ? s->rsize : s->hsize;
        for (int64_t i = 0; i < m; i++) {
            int32_t x = a[i];
            if (x < 0 || x >= n || s->pos[x] != INT32_MIN || (s->idx[x] >= s->hz - s->R) != w) return 0;
            if (i && before(s, w, x, a[(i - 1) / 2])) return 0;
            s->pos[x] = w ? (int32_t)(-1 - i) : (int32_t)i;
        }
    }
    return 1;
}

static int h2o_load(void *state, kv_rd *in, kv_err *err)
{
    h2o_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx);
    size_t cap = (size_t)(s->B < lim ? s->B : lim), nk = 0, nv = 0, ni = 0, ns = 0, nh = 0, nr = 0, n;
    void *K = NULL, *V = NULL, *idx = NULL, *score = NULL, *heap = NULL, *rheap = NULL;
    int64_t *sorted = NULL;
    h2o_state t = *s;
    t.pos = t.heap = t.rheap = NULL;
    if (kv_rd_i64(in, &t.share, err) || kv_rd_i64(in, &t.hz, err) || kv_rd_i64(in, &t.hlast, err) ||
        kv_rd_i64(in, &t.seen, err) || kv_rd_arr(in, &K, sizeof(float) * (size_t)s->ctx.d, cap, &nk, err) ||
        kv_rd_arr(in, &V, sizeof(float) * (size_t)s->ctx.dv, cap, &nv, err) ||
        kv_rd_arr(in, &idx, sizeof(int64_t), cap, &ni, err) || kv_rd_arr(in, &score, sizeof(double), cap, &ns, err) ||
        kv_rd_arr(in, &heap, sizeof(int32_t), cap, &nh, err) || kv_rd_arr(in, &rheap, sizeof(int32_t), cap, &nr, err))
        goto fail;
    n = nk;
    if (nv != n || ni != n || ns != n || nh + nr != n) goto bad;
    /* every per-slot array gets n rows: capacity = slots in use, as resize keeps it */
    size_t rows = n ? n : 1;
    t.pos = malloc(sizeof(int32_t) * rows);
    t.heap = malloc(sizeof(int32_t) * rows);
    t.rheap = malloc(sizeof(int32_t) * rows);
    sorted = malloc(sizeof(int64_t) * rows);
    if (!t.pos || !t.heap || !t.rheap || !sorted) {
        kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring h2o");
        goto fail;
    }
    if (nh) memcpy(t.heap, heap, sizeof(int32_t) * nh);
    if (nr) memcpy(t.rheap, rheap, sizeof(int32_t) * nr);
    t.K = K; t.V = V; t.idx = idx; t.score = score;
    t.held = t.cap = (int64_t)n;
    t.hsize = (int64_t)nh;
    t.rsize = (int64_t)nr;
    if (!h2o_valid(&t, sorted)) goto bad;
    free(heap); free(rheap); free(sorted);
    free_arrays(s);
    *s = t;
    if (!n) free_arrays(s); /* nothing held: no arrays, as in an uninterrupted run */
    return KV_OK;
bad:
    kv_seterr(err, KV_EINPUT, "checkpoint: h2o state is inconsistent");
fail:
    free(K); free(V); free(idx); free(score); free(heap); free(rheap); free(sorted);
    free(t.pos); free(t.heap); free(t.rheap);
    return err->code;
}

static int64_t h2o_max_bytes(const void *state)
{
    const h2o_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->B < lim ? s->B : lim;
    return held * slot_bytes(s->ctx.d, s->ctx.dv);
}

const kv_method_ops kv_method_h2o = {
    .name = "h2o",
    .kind = "eviction",
    .summary = "H2O heavy hitters: the tokens with the most accumulated attention, plus the most recent",
    .budget = "tokens= (or budget= bytes) over all ranks together: the R globally newest plus shares of the rest",
    .params = h2o_params,
    .cfg_size = sizeof(h2o_cfg),
    .check = h2o_cfg_check,
    .create = h2o_create,
    .ingest = h2o_ingest,
    .partial = h2o_partial,
    .horizon = h2o_horizon,
    .feedback = h2o_feedback,
    .bytes = h2o_bytes,
    .extra = h2o_extra,
    .free = h2o_free,
    .save = h2o_save,
    .load = h2o_load,
    .max_bytes = h2o_max_bytes,
};
