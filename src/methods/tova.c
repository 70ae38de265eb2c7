/* tova.c - tova:tokens=<B> or tova:budget=<X>[,every=<E>][,scope=head|layer]:
 * TOVA, token omission via attention (Oren et al. 2024, "Transformers are
 * Multi-State RNNs"; official code schwartz-lab-NLP/TOVA), ALGORITHMS.md
 * section 4b.
 *
 * Rule.  After each query position is answered, every held token's score is
 * its attention weight there, normalised by the GLOBAL softmax (the
 * driver's feedback hook gives each rank the merged (m, l)): the mean of
 * exp(a - m) / l over the rows of the position (the query heads sharing
 * this kv head, which TOVA averages).  Scores are replaced, not
 * accumulated.  A token arriving after that position is scored under it as
 * well (its weight had it been in those softmaxes: the rows and their merged
 * (m, l) are kept for this); before any query every score is 0 and the
 * oldest go, a window.  TOVA proper scores the new token under the next
 * query, which sees it; here queries may be sparse, so the last one stands
 * in for it.  At each decision point x (every query position, and every
 * multiple of E in between) the B best (score, index) over all ranks are
 * kept: the decision one rank holding every token makes (method.h: decide
 * hooks), so the answers do not depend on P; near-ties (KV_EVICT_TIE_REL)
 * are counted.  Between points arrivals are only held (the memory peak is B
 * plus those: budget= reserves E of them).
 *
 * scope=layer (the official code's rule): the kv heads of one layer (ctx
 * kv_heads consecutive streams, the trace's n_kv_heads) keep one token set,
 * scored by the mean over those heads of each head's score; their slots are
 * kept in the same order, so slot i is one token in all of them.
 *
 * --budget-scope layer|trace (scope.h, ALGORITHMS.md 4g; with scope=head):
 * B is the total of the scope's ns streams (budget=: ns times one stream's
 * share), each stream keeps its own tokens, and at each point the B best
 * over the ns streams are kept: a score is a softmax weight, comparable
 * across heads.  AdaKV's safeguard, floor=alpha (default 0.2): each stream
 * keeps at least floor(alpha B / ns) of its tokens (scope.h:
 * kv_scope_floor); the streams' counts come from a one-double halo each.
 *
 * budget=X: B = floor((bytes(X) - g q) / slot) - E, q a kept query row
 * (d floats, m, l), g the rows per position (the trace's query heads per kv
 * head), slot the per-token bytes below.  Every rank keeps a copy of the
 * rows (its arrivals are scored with them), as it has the broadcast query;
 * one copy is counted, on rank 0, so B, the answers and the memory do not
 * depend on P;
 * tokens= and budget= exclude each other.  B >= n: exact attention.
 *
 * Memory: allocated slots x ((d + dv) floats + index + score + two int32
 * (heap position, heap) + 16 bytes of scratch the heap's rebuild sorts
 * its keys in) + the kept query rows; the arrays are resized to the slots
 * in use after every decision and ingest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/held.h"
#include "methods/method.h"
#include "methods/common/scope.h"
#include "methods/common/slots.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t B, E;         /* global token budget; decision spacing */
    int group;            /* streams deciding together: 1, or the layer's kv heads */
    int pool;             /* 1: the group's streams keep their own tokens, sharing B (budget scope) */
    double alpha;         /* pool: the floor's fraction of an even share of B (scope.h) */
    int64_t f, gcnt;      /* at this decision: the floor, the stream's tokens over all ranks */
    int64_t xlast;        /* the last decision point */
    int64_t gheld;        /* tokens held over all ranks since then */
    int64_t seen;         /* tokens ingested */
    int64_t ties;         /* near-tie decisions */
    kv_query_cost cost;   /* method.h: cost */
    kv_slots sl;          /* one heap, by (score, index), over every held slot */
    int64_t nq;           /* rows of the last answered position (0: none yet) */
    float *lq;            /* those rows (nq x d floats) */
    double *lml;          /* their merged (m, l) */
    kv_store store;       /* how the slots hold their rows (store.h) */
} tova_state;

typedef struct {
    int64_t tokens, every, scope, store;
    double floor;
    kv_budget budget;
} tova_cfg;
KV_CFG_FITS(tova_cfg);

static const kv_param_def tova_params[] = {
    KV_PARAM_INT(tova_cfg, tokens, 1024, 1, INT32_MAX, "tokens held over all ranks together"),
    KV_PARAM_INT(tova_cfg, every, 16, 1, INT32_MAX,
                 "tokens between eviction decisions besides every query position (the peak holds up to this many more)"),
    KV_PARAM_ENUM(tova_cfg, scope, "head|layer", 0,
                  "head: a token set per kv head; layer: one per layer, scored by the mean over its heads (official)"),
    KV_PARAM_DOUBLE(tova_cfg, floor, 0.2, 0, 1,
                    "--budget-scope layer|trace: each stream keeps at least this fraction of an even share of the "
                    "tokens (AdaKV's alpha)"),
    KV_PARAM_BUDGET(tova_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_ENUM(tova_cfg, store, KV_STORE_CHOICES, 0, KV_STORE_HELP),
    KV_PARAM_TABLE_END
};

static int64_t slot_bytes(int store, int d, int dv)
{
    return kv_slots_row_bytes_in(store, d, dv, 1, KV_SLOTS_SHUFFLE_SCRATCH); /* the heap keys' scratch */
}

/* one kept query row: d floats and its merged (m, l) */
static int64_t query_bytes(int d)
{
    return (int64_t)d * (int64_t)sizeof(float) + 2 * (int64_t)sizeof(double);
}

/* rows kept: the query rows of a position of this stream (grouped-query
 * attention: n_heads / n_kv_heads; 1 when unknown) */
static int64_t group_rows(const kv_method_ctx *ctx) { return ctx->q_group > 0 ? ctx->q_group : 1; }

/* The kept rows are counted once, on rank 0: every rank keeps a copy of
 * what is the broadcast query (the driver holds it on every rank too), and
 * one rank holding every token would keep one. */
static int64_t rows_counted(const tova_state *s) { return s->ctx.rank == 0 ? s->nq : 0; }

static int tova_cfg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    tova_cfg *c = cfg;
    if (c->budget.kind != KV_BUDGET_NONE && kv_spec_has(spec, "tokens"))
        return kv_params_error(tova_params, spec, err, "give tokens= or budget=, not both");
    return KV_OK;
}

extern const kv_method_ops kv_method_tova;

static int tova_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const tova_cfg *c = kv_method_cfg(&kv_method_tova, spec, err);
    if (!c) return err->code;
    int64_t B = c->tokens, ns = kv_scope_streams(ctx);
    if (c->scope == 1 && ns > 1)
        return kv_params_error(tova_params, spec, err, "scope=layer (one token set per layer) and --budget-scope "
                               "layer|trace (a budget shared by heads that keep their own) do not combine");
    if (c->scope == 1 && ctx->kv_heads <= 0)
        return kv_params_error(tova_params, spec, err,
                               "scope=layer needs the trace's n_kv_heads attribute (traces recorded from a model have it)");
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes((int)c->store, ctx->d, ctx->dv), bytes = kv_scope_share_bytes(&c->budget, ctx);
        /* one copy of the rows (and of a tq store's rotations), counted on rank 0: B must not depend on P */
        int64_t rest = bytes - group_rows(ctx) * query_bytes(ctx->d) - kv_store_fixed_of((int)c->store, ctx->d, ctx->dv);
        B = rest > 0 ? rest / per - c->every : 0;
        if (B < 1)
            return kv_params_error(tova_params, spec, err,
                                   "budget of %lld bytes holds no token (one takes %lld, plus %lld for the kept query rows, and %lld "
                                   "arriving between decisions are reserved: every=)",
                                   (long long)bytes, (long long)per, (long long)(group_rows(ctx) * query_bytes(ctx->d)),
                                   (long long)c->every);
        if (B > INT32_MAX)
            return kv_params_error(tova_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
        B *= ns;
    }
    tova_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->B = B;
    s->E = c->every;
    s->group = c->scope == 1 ? (int)ctx->kv_heads : (int)ns;
    s->pool = ns > 1;
    s->alpha = c->floor;
    kv_slots_init(&s->sl, ctx->d, ctx->dv, 1, KV_SLOTS_SHUFFLE_SCRATCH);
    if (kv_store_init(&s->store, (int)c->store, ctx->d, ctx->dv, ctx->seed, ctx->stream, ctx->rank == 0, err)) {
        free(s);
        return err->code;
    }
    kv_slots_use_store(&s->sl, &s->store);
    *out = s;
    return KV_OK;
}

/* Slots t0 .. t0+n-1 get their score: the mean weight under the last
 * position's rows, from the keys as held.  KV_EINTERNAL without memory. */
static int score_range(tova_state *s, int64_t t0, int64_t n)
{
    kv_slots *sl = &s->sl;
    if (n <= 0) return KV_OK;
    const double *a = kv_slots_logits(sl, s->lq, (int)s->nq, s->ctx.scale, t0, n);
    if (s->nq && !a) return KV_EINTERNAL;
    for (int64_t t = 0; t < n; t++) {
        double sum = 0;
        for (int64_t q = 0; q < s->nq; q++) {
            double m = s->lml[2 * q], l = s->lml[2 * q + 1];
            if (l > 0) sum += exp(a[q * n + t] - m) / l;
        }
        /* the mean over the rows: one row's is its weight (x / 1 is x: no division) */
        sl->score[t0 + t] = s->nq > 1 ? sum / (double)s->nq : s->nq ? sum : 0.0;
    }
    return KV_OK;
}

static int tova_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    tova_state *s = state;
    kv_slots *sl = &s->sl;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    if (kv_slots_grow(sl, sl->held + (int64_t)n, "tova", err)) return err->code;
    int64_t h0 = sl->held;
    for (size_t i = 0; i < n; i++)
        if (kv_slots_set(sl, (int32_t)(h0 + (int64_t)i), K + i * d, V + i * dv, first + (int64_t)i, 0.0))
            return kv_store_refused(&s->store, "tova", err);
    sl->held = h0 + (int64_t)n;
    if (score_range(s, h0, (int64_t)n)) {
        sl->held = h0;
        return kv_seterr(err, KV_EINTERNAL, "tova: out of memory scoring %zu tokens", n);
    }
    for (size_t i = 0; i < n; i++) kv_slots_push(sl, 0, (int32_t)(h0 + (int64_t)i));
    s->seen += (int64_t)n;
    kv_slots_resize(sl, sl->held);
    return KV_OK;
}

static int64_t tova_every(const void *state) { return ((const tova_state *)state)->E; }

static int tova_group(const void *state) { return ((const tova_state *)state)->group; }

static int64_t tova_need(void *state, int64_t x, int at_query)
{
    tova_state *s = state;
    if (x <= s->xlast || (!at_query && x % s->E)) return 0;
    int64_t cand = s->gheld + (s->pool ? s->group : 1) * (x - s->xlast);
    s->xlast = x;
    s->gheld = cand < s->B ? cand : s->B;
    s->f = s->pool ? kv_scope_floor(s->alpha, s->B, s->group) : 0;
    return cand > s->B ? cand - s->B : 0;
}

static int64_t tova_extra_cands(const void *state)
{
    const tova_state *s = state;
    return s->group * s->f;
}

/* Under a floor: each stream's tokens on this rank. */
static size_t tova_halo_len(const void *state, int64_t x)
{
    (void)x;
    return ((const tova_state *)state)->f > 0;
}

static void tova_halo(void *state, int64_t x, double *halo)
{
    const tova_state *s = state;
    (void)x;
    if (s->f > 0) halo[0] = (double)s->sl.held; /* else the halo has no room (the driver still calls) */
}

/* Slot i's key in a group: the mean of its score over the group's streams
 * (whose slots hold the same tokens in the same order). */
static kv_evkey group_key(void *const *st, int ns, int64_t i)
{
    const tova_state *s0 = st[0];
    double sum = 0;
    for (int k = 0; k < ns; k++) sum += ((const tova_state *)st[k])->sl.score[i];
    return (kv_evkey){ ns > 1 ? sum / ns : sum, (double)s0->sl.idx[i] };
}

static int same_tokens(void *const *st, int ns)
{
    const kv_slots *a = &((const tova_state *)st[0])->sl;
    for (int k = 1; k < ns; k++) {
        const kv_slots *b = &((const tova_state *)st[k])->sl;
        if (b->held != a->held || (a->held && memcmp(a->idx, b->idx, sizeof(int64_t) * (size_t)a->held))) return 0;
    }
    return 1;
}

static int tova_cands(void *const *st, int ns, int64_t x, const double *halo, int L, kv_evkey *keys)
{
    const tova_state *s = st[0];
    (void)x;
    if (ns == 1) return kv_slots_lowest(&s->sl, L, keys);
    if (s->pool) {
        kv_slots *sl[ns];
        for (int k = 0; k < ns; k++) {
            tova_state *sk = st[k];
            sl[k] = &sk->sl;
            sk->gcnt = halo && sk->f > 0 ? (int64_t)halo[k] : 0;
        }
        return kv_scope_slots_lowest(sl, ns, L, keys);
    }
    if (!same_tokens(st, ns)) return KV_EINTERNAL;
    kv_evkey *all = malloc(sizeof(kv_evkey) * (size_t)(s->sl.held + 1));
    if (!all) return KV_EINTERNAL;
    for (int64_t i = 0; i < s->sl.held; i++) all[i] = group_key(st, ns, i);
    kv_evict_lowest(all, (size_t)s->sl.held, L, keys);
    free(all);
    return KV_OK;
}

static int desc_slot(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x < y) - (x > y);
}

/* One stream: the slots whose key goes are the heap's lowest; pop just those
 * (O(gone log B), the heap stays right) into the heap's freed tail, then
 * drop them from the highest slot down: the slots end in the order the full
 * scan from the last slot down gave (each gone slot is still as ingested
 * when dropped, its gap filled by the last kept slot), so the partial sums
 * and the answers are unchanged. */
static void drop_lowest(kv_slots *sl, kv_evkey cut)
{
    int64_t n0 = sl->hsize[0];
    while (sl->hsize[0] > 0 && kv_evkey_goes(kv_slots_key(sl, kv_slots_top(sl, 0)), cut)) {
        int32_t g = kv_slots_pop(sl, 0);
        sl->heap[0][sl->hsize[0]] = g;
    }
    int32_t *gone = sl->heap[0] + sl->hsize[0];
    size_t ng = (size_t)(n0 - sl->hsize[0]);
    if (ng > 1) qsort(gone, ng, sizeof *gone, desc_slot); /* a rank holding nothing has no heap array */
    for (size_t i = 0; i < ng; i++) kv_slots_drop(sl, gone[i]);
}

/* Drop the slots whose (group) key goes.  One stream: drop_lowest; a budget
 * scope pops each stream's heap (which stays right); a layer group scans
 * from the last slot down, so that every stream of it moves the same slots
 * the same way, then makes the heaps anew. */
static int tova_apply(void *const *st, int ns, int64_t x, const kv_evkey *merged, int64_t need)
{
    kv_evkey cut = merged[need - 1], cuts[ns], next = merged[need];
    int64_t cnt[ns];
    tova_state *s0 = st[0];
    (void)x;
    if (ns > 1 && !s0->pool && !same_tokens(st, ns)) return KV_EINTERNAL;
    memset(cnt, 0, sizeof cnt); /* ns >= 1: quiets a maybe-uninitialized */
    for (int k = 0; k < ns; k++) cnt[k] = ((tova_state *)st[k])->gcnt;
    if (s0->pool && kv_scope_floor_cuts(merged, need + 1 + ns * s0->f, ns, need, cnt, s0->f, cuts, &next))
        return KV_EINTERNAL;
    for (int k = 0; k < ns && s0->pool; k++) kv_scope_slots_drop(&((tova_state *)st[k])->sl, ns, k, cuts[k]);
    if (ns == 1 && !s0->pool) drop_lowest(&s0->sl, cut);
    for (int64_t i = s0->sl.held - 1; i >= 0 && ns > 1 && !s0->pool; i--) {
        if (!kv_evkey_goes(group_key(st, ns, i), cut)) continue;
        for (int k = 0; k < ns; k++) kv_slots_drop(&((tova_state *)st[k])->sl, (int32_t)i);
    }
    for (int k = 0; k < ns; k++) {
        tova_state *s = st[k];
        if (ns > 1 && !s0->pool) kv_slots_reheap(&s->sl);
        s->ties += kv_evict_near_tie(s0->pool ? cuts[k] : cut, next);
        kv_slots_resize(&s->sl, s->sl.held);
    }
    return KV_OK;
}

static int tova_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    tova_state *s = state;
    (void)p; /* every held token is < p */
    kv_slots_cost(&s->sl, nq, &s->cost);
    return kv_slots_attn(&s->sl, Q, nq, s->ctx.scale, st);
}

/* Scores = the mean global attention weight under the call's rows, which
 * are kept (with their merged (m, l)) to score arrivals. */
static int tova_feedback(void *state, const float *Q, int nq, int64_t p, const double *ml)
{
    tova_state *s = state;
    kv_slots *sl = &s->sl;
    size_t n = (size_t)sl->held, d = (size_t)s->ctx.d;
    (void)p;
    if (nq <= 0) return KV_OK;
    if (nq != s->nq) {
        float *q = realloc(s->lq, sizeof(float) * d * (size_t)nq);
        if (!q) return KV_EINTERNAL;
        s->lq = q;
        double *m = realloc(s->lml, sizeof(double) * 2 * (size_t)nq);
        if (!m) return KV_EINTERNAL;
        s->lml = m;
        s->nq = nq;
    }
    memcpy(s->lq, Q, sizeof(float) * d * (size_t)nq);
    memcpy(s->lml, ml, sizeof(double) * 2 * (size_t)nq);
    if (score_range(s, 0, (int64_t)n)) return KV_EINTERNAL;
    kv_slots_heapify_shuffled(sl, 0);
    kv_slots_score_cost(sl, nq, &s->cost);
    return KV_OK;
}

static void tova_cost(const void *state, kv_query_cost *c)
{
    *c = ((const tova_state *)state)->cost;
}

static size_t tova_bytes(const void *state)
{
    const tova_state *s = state;
    return kv_slots_bytes(&s->sl) + (size_t)(rows_counted(s) * query_bytes(s->ctx.d)) +
           (size_t)kv_store_fixed_bytes(&s->store);
}

static void tova_extra(const void *state, kv_method_extra *x)
{
    const tova_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->sl.held;
    x->near_ties = s->ties;
}

static void tova_free(void *state)
{
    tova_state *s = state;
    if (!s) return;
    kv_slots_free(&s->sl);
    kv_store_free(&s->store);
    free(s->lq);
    free(s->lml);
    free(s);
}

/* Counters, the last position's rows, then the slots as held (partial
 * sums over them in slot order), their scores and the heap (kv_slots_save). */
static void tova_save(const void *state, kv_buf *out)
{
    const tova_state *s = state;
    kv_buf_put_i64(out, s->xlast);
    kv_buf_put_i64(out, s->gheld);
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_i64(out, s->ties);
    kv_buf_put_arr(out, s->lq, (size_t)(s->nq * s->ctx.d) * sizeof(float));
    kv_buf_put_arr(out, s->lml, (size_t)(2 * s->nq) * sizeof(double));
    kv_slots_save(&s->sl, out);
}

/* What ingest, the decisions and feedback maintain beyond kv_slots_load's
 * rules: counters in range, finite rows with l >= 0 and m finite iff l > 0
 * (else -inf). */
static int tova_valid(const tova_state *s)
{
    int64_t n = s->sl.held, lim = kv_shard_limit(&s->ctx);
    if (s->xlast < 0 || s->xlast > s->ctx.n_total || s->gheld < 0 || s->gheld > s->B || n > s->gheld ||
        s->seen < n || s->seen > lim || s->ties < 0 || s->ties > s->xlast)
        return 0;
    if (s->nq && !kv_all_finite(s->lq, (size_t)(s->nq * s->ctx.d))) return 0;
    for (int64_t q = 0; q < s->nq; q++) {
        double m = s->lml[2 * q], l = s->lml[2 * q + 1];
        if (!kv_merged_l_ok(l, s->ctx.n_total) || (l > 0 ? !isfinite(m) : m != -INFINITY)) return 0;
    }
    return 1;
}

static int tova_load(void *state, kv_rd *in, kv_err *err)
{
    tova_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), most = s->B + s->E < lim ? s->B + s->E : lim;
    size_t nr = 0, nm = 0;
    void *lq = NULL, *lml = NULL;
    tova_state t = *s;
    if (kv_rd_i64(in, &t.xlast, err) || kv_rd_i64(in, &t.gheld, err) || kv_rd_i64(in, &t.seen, err) ||
        kv_rd_i64(in, &t.ties, err) || kv_rd_arr(in, &lq, sizeof(float), (size_t)s->ctx.d * 4096, &nr, err) ||
        kv_rd_arr(in, &lml, sizeof(double), 2 * 4096, &nm, err) ||
        kv_slots_load(&t.sl, &s->sl, in, most, s->ctx.n_total, "tova", err)) {
        free(lq);
        free(lml);
        return err->code;
    }
    t.lq = lq;
    t.lml = lml;
    t.nq = (int64_t)(nm / 2);
    if (s->ctx.d < 1 || nr != (size_t)t.nq * (size_t)s->ctx.d || nm % 2 || !tova_valid(&t)) {
        free(lq);
        free(lml);
        kv_slots_free(&t.sl);
        return kv_seterr(err, KV_EINPUT, "checkpoint: tova state is inconsistent");
    }
    kv_slots_free(&s->sl);
    free(s->lq);
    free(s->lml);
    *s = t;
    return KV_OK;
}

static int64_t tova_max_bytes(const void *state)
{
    const tova_state *s = state;
    int64_t held = kv_scope_held_max(&s->ctx, s->B, s->E, kv_shard_limit(&s->ctx));
    /* the rows of a position: the trace's query heads per kv head (more only
     * where a trace puts several queries of one head at one position) */
    return held * slot_bytes(s->store.which, s->ctx.d, s->ctx.dv) +
           (s->ctx.rank == 0 ? group_rows(&s->ctx) * query_bytes(s->ctx.d) : 0) + kv_store_fixed_bytes(&s->store);
}

const kv_method_ops kv_method_tova = {
    .name = "tova",
    .kind = "eviction",
    .summary = "TOVA: after each query, drop the held tokens with the lowest attention under it",
    .budget = "tokens= (or budget= bytes) over all ranks together: the B tokens best scored by the last query",
    .params = tova_params,
    .cfg_size = sizeof(tova_cfg),
    .check = tova_cfg_check,
    .create = tova_create,
    .ingest = tova_ingest,
    .partial = tova_partial,
    .feedback = tova_feedback,
    .decide_every = tova_every,
    .decide_group = tova_group,
    .decide_need = tova_need,
    .decide_extra = tova_extra_cands,
    .decide_halo_len = tova_halo_len,
    .decide_halo = tova_halo,
    .decide_cands = tova_cands,
    .decide_apply = tova_apply,
    .bytes = tova_bytes,
    .extra = tova_extra,
    .free = tova_free,
    .save = tova_save,
    .load = tova_load,
    .max_bytes = tova_max_bytes,
    .cost = tova_cost,
    .scoped = 1,
    .conform = { "tokens=120;tokens=1000000;tokens=7,every=3;tokens=100,store=kivi2;tokens=90,store=tq4", KV_PINV_ROUNDING },
};
