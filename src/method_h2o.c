/* method_h2o.c - h2o:budget=<tokens>[,recent=<tokens>]: heavy hitters
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
#include "method.h"
#include "partial.h"

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

static int h2o_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    int64_t budget, recent;
    if (kv_spec_int(spec, "budget", 1, 0, 1, INT32_MAX, &budget, err)) return err->code;
    if (kv_spec_int(spec, "recent", 0, budget / 2, 0, INT32_MAX, &recent, err) || kv_spec_finish(spec, err))
        return err->code;
    if (recent > budget)
        return kv_seterr(err, KV_EINPUT, "method '%s': recent=%lld exceeds budget=%lld", spec->text,
                         (long long)recent, (long long)budget);
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

static void h2o_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    h2o_state *s = state;
    int d = s->ctx.d, dv = s->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv), n = (size_t)s->held;
    float scale = (float)s->ctx.scale;
    (void)p; /* every held token is < p */
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    if (!n || nq <= 0) return;
    double *w = malloc(sizeof(double) * n), *inc = calloc(n, sizeof(double));
    if (!w || !inc) abort(); /* partial cannot fail; exact treats this as fatal too */
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

const kv_method_ops kv_method_h2o = {
    .name = "h2o",
    .usage = "budget=<tokens over all ranks>[,recent=<tokens, default budget/2>]",
    .create = h2o_create,
    .ingest = h2o_ingest,
    .partial = h2o_partial,
    .bytes = h2o_bytes,
    .extra = h2o_extra,
    .free = h2o_free,
};
