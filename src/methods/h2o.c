/* h2o.c - h2o:budget=<tokens>[,recent=<tokens>]: heavy hitters
 * (H2O, Zhang et al. 2023), ALGORITHMS.md section 4.
 *
 * A rank keeps at most its share of budget (kv_rank_share: proportional to
 * its shard, ceil(budget/P) when shards are even), its share of recent
 * newest ones always, and among the others those with the largest score, the
 * attention they have received from the queries answered so far.  Both
 * parameters are totals over the ranks (budget-style parameters are split so
 * memory is comparable across rank counts); recent <= budget, default
 * budget/2.  With one rank "recent" is the last `recent` tokens of the
 * stream; with several it is each rank's newest own tokens.
 *
 * Scores: every query of a partial() call adds to each held token its
 * attention weight normalised within this rank's held set (the weights of a
 * query sum to 1 on each rank).  All queries of a call are answered from the
 * scores before the call and the increments are added afterwards, so the
 * answers do not depend on the order of queries within a call (the scores
 * only up to rounding).  This is the method's online nature: partial()
 * changes what later calls return, by design.
 *
 * Eviction (on ingest, when the rank holds its budget): the non-recent token
 * with the lowest (score, index) goes; a min-heap keeps that O(log budget).
 * With recent=0 an arriving token (score 0) competes too and is dropped
 * unless some held token also has score 0.
 *
 * Memory: held x ((d + dv) floats + index + score + three int32 links). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/method.h"
#include "kernels/partial.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t budget, recent; /* per rank */
    int64_t held, alloc;    /* slots used (always 0..held-1), allocated */
    float *K, *V;
    int64_t *idx;
    double *score;
    int32_t *hpos;          /* heap position; -1 while in the recent list */
    int32_t *next;          /* recent list, oldest to newest; -1 ends it */
    int32_t *heap;          /* min-heap of non-recent slots by (score, idx) */
    int64_t hsize;
    int32_t rfirst, rlast;
    int64_t rcount;
} h2o_state;

typedef struct { int64_t budget, recent; } h2o_cfg;
KV_CFG_FITS(h2o_cfg);

static const kv_param_def h2o_params[] = {
    KV_PARAM_INT(h2o_cfg, budget, 1024, 1, INT32_MAX, "tokens held over all ranks (each rank its share)"),
    KV_PARAM_INT_DERIVED(h2o_cfg, recent, -1, "budget/2", 0, INT32_MAX,
                         "of the budget, the newest tokens always kept; <= budget"),
    KV_PARAM_TABLE_END
};

static int h2o_cfg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    h2o_cfg *c = cfg;
    if (c->recent < 0) c->recent = c->budget / 2;
    if (c->recent > c->budget)
        return kv_params_error(h2o_params, spec, err, "recent=%lld exceeds budget=%lld", (long long)c->recent,
                               (long long)c->budget);
    return KV_OK;
}

extern const kv_method_ops kv_method_h2o;

static int h2o_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const h2o_cfg *c = kv_method_cfg(&kv_method_h2o, spec, err);
    if (!c) return err->code;
    int64_t budget = c->budget, recent = c->recent;
    h2o_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->budget = kv_rank_share(ctx, budget);
    s->recent = kv_rank_share(ctx, recent); /* <= budget since recent <= budget */
    if (recent == 0) s->recent = 0;
    s->rfirst = s->rlast = -1;
    *out = s;
    return KV_OK;
}

static int grow(h2o_state *s, kv_err *err)
{
    int64_t n = s->alloc ? 2 * s->alloc : 64;
    if (n > s->budget) n = s->budget;
    size_t N = (size_t)n;
#define RE(p, per) do { void *q = realloc(p, sizeof *(p) * (per) * N); \
        if (!q) return kv_seterr(err, KV_EINTERNAL, "h2o: out of memory holding %zu tokens", N); \
        p = q; } while (0)
    RE(s->K, (size_t)s->ctx.d);
    RE(s->V, (size_t)s->ctx.dv);
    RE(s->idx, 1);
    RE(s->score, 1);
    RE(s->hpos, 1);
    RE(s->next, 1);
    RE(s->heap, 1);
#undef RE
    s->alloc = n;
    return KV_OK;
}

/* ---- min-heap by (score, index) ---- */
static int less(const h2o_state *s, int32_t a, int32_t b)
{
    return s->score[a] < s->score[b] || (s->score[a] == s->score[b] && s->idx[a] < s->idx[b]);
}

static void place(h2o_state *s, int64_t pos, int32_t slot)
{
    s->heap[pos] = slot;
    s->hpos[slot] = (int32_t)pos;
}

static void sift_down(h2o_state *s, int64_t pos)
{
    int32_t x = s->heap[pos];
    for (;;) {
        int64_t c = 2 * pos + 1;
        if (c >= s->hsize) break;
        if (c + 1 < s->hsize && less(s, s->heap[c + 1], s->heap[c])) c++;
        if (!less(s, s->heap[c], x)) break;
        place(s, pos, s->heap[c]);
        pos = c;
    }
    place(s, pos, x);
}

static void heap_push(h2o_state *s, int32_t slot)
{
    int64_t pos = s->hsize++;
    while (pos > 0 && less(s, slot, s->heap[(pos - 1) / 2])) {
        place(s, pos, s->heap[(pos - 1) / 2]);
        pos = (pos - 1) / 2;
    }
    place(s, pos, slot);
}

static int32_t heap_pop(h2o_state *s)
{
    int32_t top = s->heap[0];
    if (--s->hsize > 0) {
        s->heap[0] = s->heap[s->hsize];
        sift_down(s, 0);
    }
    return top;
}

/* ---- recent list (FIFO threaded through the slots) ---- */
static void recent_append(h2o_state *s, int32_t slot)
{
    s->hpos[slot] = -1;
    s->next[slot] = -1;
    if (s->rcount) s->next[s->rlast] = slot;
    else s->rfirst = slot;
    s->rlast = slot;
    s->rcount++;
}

static int32_t recent_pop(h2o_state *s)
{
    int32_t slot = s->rfirst;
    s->rfirst = s->next[slot];
    if (--s->rcount == 0) s->rfirst = s->rlast = -1;
    return slot;
}

static int h2o_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    h2o_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    for (size_t i = 0; i < n; i++) {
        int32_t slot;
        if (s->held < s->budget) {
            if (s->held == s->alloc && grow(s, err)) return err->code;
            slot = (int32_t)s->held++;
        } else {
            /* the oldest recent token is about to leave the recent set: it
             * competes for eviction too (the heap is then never empty) */
            if (s->recent > 0 && s->rcount == s->recent) heap_push(s, recent_pop(s));
            if (s->recent == 0 && s->score[s->heap[0]] > 0) continue; /* newcomer is the lowest */
            slot = heap_pop(s);
        }
        memcpy(s->K + slot * d, K + i * d, sizeof(float) * d);
        memcpy(s->V + slot * dv, V + i * dv, sizeof(float) * dv);
        s->idx[slot] = first + (int64_t)i;
        s->score[slot] = 0.0;
        if (s->recent > 0) {
            recent_append(s, slot);
            if (s->rcount > s->recent) heap_push(s, recent_pop(s));
        } else {
            heap_push(s, slot);
        }
    }
    return KV_OK;
}

static int h2o_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    h2o_state *s = state;
    int d = s->ctx.d, dv = s->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv), n = (size_t)s->held;
    float scale = (float)s->ctx.scale;
    (void)p; /* every held token is < p */
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    if (!n || nq <= 0) return KV_OK;
    double *w = malloc(sizeof(double) * n), *inc = calloc(n, sizeof(double));
    if (!w || !inc) {
        free(w);
        free(inc);
        return KV_EINTERNAL;
    }
    for (int q = 0; q < nq; q++) {
        const float *qq = Q + (size_t)q * d;
        double m = -INFINITY;
        for (size_t t = 0; t < n; t++) {
            const float *k = s->K + t * d;
            float dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < d; c++) dot += qq[c] * k[c];
            w[t] = (double)(dot * scale);
            m = w[t] > m ? w[t] : m;
        }
        double *x = st + q * sl, l = 0, l2 = 0;
        for (size_t t = 0; t < n; t++) {
            double e = exp(w[t] - m);
            const float *v = s->V + t * dv;
            w[t] = e;
            l += e;
            l2 += e * e;
            for (int c = 0; c < dv; c++) x[KV_PS_U + c] += e * v[c];
        }
        x[KV_PS_M] = m;
        x[KV_PS_L] = l;
        x[KV_PS_L2] = l2;
        for (size_t t = 0; t < n; t++) inc[t] += w[t] / l;
    }
    /* scores change only after every query of the call was answered */
    for (size_t t = 0; t < n; t++) s->score[t] += inc[t];
    for (int64_t pos = s->hsize / 2 - 1; pos >= 0; pos--) sift_down(s, pos);
    free(w);
    free(inc);
    return KV_OK;
}

static size_t h2o_bytes(const void *state)
{
    const h2o_state *s = state;
    size_t per = (size_t)(s->ctx.d + s->ctx.dv) * sizeof(float) + sizeof(int64_t) + sizeof(double) +
                 3 * sizeof(int32_t);
    return (size_t)s->held * per;
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
    free(s->K);
    free(s->V);
    free(s->idx);
    free(s->score);
    free(s->hpos);
    free(s->next);
    free(s->heap);
    free(s);
}


/* Slots as held (partial sums over them in slot order), their scores, the
 * heap array as laid out (ties and sift order decide later evictions) and
 * the recent list oldest first.  hpos and next follow from heap and list. */
static void h2o_save(const void *state, kv_buf *out)
{
    const h2o_state *s = state;
    size_t n = (size_t)s->held;
    kv_buf_put_arr(out, s->K, n * (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_arr(out, s->V, n * (size_t)s->ctx.dv * sizeof(float));
    kv_buf_put_arr(out, s->idx, n * sizeof(int64_t));
    kv_buf_put_arr(out, s->score, n * sizeof(double));
    kv_buf_put_arr(out, s->heap, (size_t)s->hsize * sizeof(int32_t));
    kv_buf_put_i64(out, s->rcount);
    for (int32_t slot = s->rfirst, i = 0; i < s->rcount; slot = s->next[slot], i++) {
        int32_t x = slot;
        kv_buf_put(out, &x, sizeof x);
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* What ingest and partial maintain: indices distinct and in range; keys,
 * values and scores finite, scores >= 0; every slot in the heap or in the
 * recent list exactly once; a valid heap; min(held, recent) recent tokens,
 * oldest first.  Sets hpos; sorted is scratch for held indices. */
static int h2o_check(h2o_state *s, const int32_t *list, int64_t *sorted)
{
    int64_t n = s->held;
    if (s->hsize + s->rcount != n || s->rcount != (s->recent < n ? s->recent : n)) return 0;
    if (!n) return 1;
    for (int64_t i = 0; i < n; i++)
        if (s->idx[i] < 0 || s->idx[i] >= s->ctx.n_total || !isfinite(s->score[i]) || s->score[i] < 0) return 0;
    if (!kv_all_finite(s->K, (size_t)n * (size_t)s->ctx.d) || !kv_all_finite(s->V, (size_t)n * (size_t)s->ctx.dv)) return 0;
    memcpy(sorted, s->idx, sizeof(int64_t) * (size_t)n);
    qsort(sorted, (size_t)n, sizeof(int64_t), cmp_i64);
    for (int64_t i = 1; i < n; i++)
        if (sorted[i] == sorted[i - 1]) return 0;
    for (int64_t i = 0; i < n; i++) s->hpos[i] = -2; /* not placed yet */
    for (int64_t p = 0; p < s->hsize; p++) {
        int32_t x = s->heap[p];
        if (x < 0 || x >= n || s->hpos[x] != -2) return 0;
        s->hpos[x] = (int32_t)p;
        if (p && less(s, x, s->heap[(p - 1) / 2])) return 0;
    }
    for (int64_t i = 0; i < s->rcount; i++) {
        int32_t x = list[i];
        if (x < 0 || x >= n || s->hpos[x] != -2 || (i && s->idx[x] <= s->idx[list[i - 1]])) return 0;
        s->hpos[x] = -1;
    }
    return 1;
}

static int h2o_load(void *state, kv_rd *in, kv_err *err)
{
    h2o_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx);
    size_t cap = (size_t)(s->budget < lim ? s->budget : lim), nk = 0, nv = 0, ni = 0, ns = 0, nh = 0, n;
    void *K = NULL, *V = NULL, *idx = NULL, *score = NULL, *heap = NULL;
    int32_t *list = NULL;
    int64_t *sorted = NULL, rcount;
    h2o_state t = *s;
    t.hpos = t.next = t.heap = NULL;
    if (kv_rd_arr(in, &K, sizeof(float) * (size_t)s->ctx.d, cap, &nk, err) ||
        kv_rd_arr(in, &V, sizeof(float) * (size_t)s->ctx.dv, cap, &nv, err) ||
        kv_rd_arr(in, &idx, sizeof(int64_t), cap, &ni, err) || kv_rd_arr(in, &score, sizeof(double), cap, &ns, err) ||
        kv_rd_arr(in, &heap, sizeof(int32_t), cap, &nh, err) || kv_rd_i64(in, &rcount, err))
        goto fail;
    n = nk;
    if (nv != n || ni != n || ns != n || nh > n || rcount < 0 || (uint64_t)rcount != n - nh ||
        (uint64_t)rcount > (in->len - in->pos) / sizeof(int32_t))
        goto bad;
    /* every per-slot array gets n rows: alloc = held, grow doubles from there */
    size_t rows = n ? n : 1;
    t.hpos = malloc(sizeof(int32_t) * rows);
    t.next = malloc(sizeof(int32_t) * rows);
    t.heap = malloc(sizeof(int32_t) * rows);
    list = malloc(sizeof(int32_t) * rows);
    sorted = malloc(sizeof(int64_t) * rows);
    if (!t.hpos || !t.next || !t.heap || !list || !sorted) {
        kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring h2o");
        goto fail;
    }
    if (kv_rd_get(in, list, sizeof(int32_t) * (size_t)rcount, err)) goto fail;
    if (nh) memcpy(t.heap, heap, sizeof(int32_t) * nh);
    t.K = K; t.V = V; t.idx = idx; t.score = score;
    t.held = t.alloc = (int64_t)n;
    t.hsize = (int64_t)nh;
    t.rcount = rcount;
    if (!h2o_check(&t, list, sorted)) goto bad;
    t.rfirst = t.rlast = -1;
    for (int64_t i = 0; i < rcount; i++) {
        t.next[list[i]] = i + 1 < rcount ? list[i + 1] : -1;
        if (!i) t.rfirst = list[i];
        t.rlast = list[i];
    }
    for (int64_t p = 0; p < t.hsize; p++) t.next[t.heap[p]] = -1; /* not read for heap slots */
    free(heap); free(list); free(sorted);
    free(s->K); free(s->V); free(s->idx); free(s->score); free(s->hpos); free(s->next); free(s->heap);
    *s = t;
    return KV_OK;
bad:
    kv_seterr(err, KV_EINPUT, "checkpoint: h2o state is inconsistent");
fail:
    free(K); free(V); free(idx); free(score); free(heap); free(list); free(sorted);
    free(t.hpos); free(t.next); free(t.heap);
    return err->code;
}

static int64_t h2o_max_bytes(const void *state)
{
    const h2o_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->budget < lim ? s->budget : lim;
    return held * ((int64_t)(s->ctx.d + s->ctx.dv) * (int64_t)sizeof(float) + (int64_t)sizeof(int64_t) +
                   (int64_t)sizeof(double) + 3 * (int64_t)sizeof(int32_t));
}

const kv_method_ops kv_method_h2o = {
    .name = "h2o",
    .kind = "eviction",
    .summary = "H2O heavy hitters: the tokens with the most accumulated attention, plus the most recent",
    .budget = "budget tokens over all ranks (ceil(budget/P) per rank)",
    .params = h2o_params,
    .cfg_size = sizeof(h2o_cfg),
    .check = h2o_cfg_check,
    .create = h2o_create,
    .ingest = h2o_ingest,
    .partial = h2o_partial,
    .bytes = h2o_bytes,
    .extra = h2o_extra,
    .free = h2o_free,
    .save = h2o_save,
    .load = h2o_load,
    .max_bytes = h2o_max_bytes,
};
