/* snapkv.c - snapkv:tokens=<B>|budget=<X>[,window=<w>,kernel=<k>,pool=avg|max,
 * period=<T>,every=<E>]: SnapKV (Li et al. 2024, "SnapKV: LLM Knows What You
 * are Looking for Before Generation") for decoding, ALGORITHMS.md section 4c.
 *
 * SnapKV compresses a prompt once (official code FasterDecoding/SnapKV,
 * snapkv_utils.py at 395b54d: window 32, kernel 5, avgpool): the queries of
 * the last `window` positions (the observation window) vote for the earlier
 * tokens by their summed attention, the votes are pooled over `kernel`
 * neighbouring positions (so a kept token brings its neighbours), and the
 * top tokens are kept with the window itself.  Here the stream never ends,
 * so the vote is repeated:
 *
 *   - the query rows of the last `window` answered positions (all the rows
 *     of a position: the query heads of this kv head vote together) are
 *     buffered with the merged global (m, l) the feedback hook gives;
 *   - at each decision point x (every query position, and every multiple of
 *     `every` between them) once the tokens held over all ranks exceed B,
 *     they are compressed to B - T' (T' = min(period, B - window)), so a
 *     compression comes about every T' tokens;
 *   - the tokens of the newest `window` positions, [x - window, x), are
 *     always kept (the observation window); every other held token t gets
 *     vote(t) = sum over the buffered rows r at positions q_r > t of
 *     exp(a_r(t) - m_r) / l_r, pooled over the held non-window tokens within
 *     kernel/2 positions (avg: their sum over kernel, torch's zero-padded
 *     avg_pool1d; max: their largest), and the lowest (pooled, index) go.
 *
 * The decision is the one one rank holding every token makes (method.h:
 * decide hooks): the lowest keys are merged over the ranks, and the pooling
 * sees the neighbours another rank holds across a shard-chunk boundary
 * through the decision's halo (the votes within kernel/2 of every
 * boundary).  So the answers do not depend on P; near-ties are counted.
 * B >= n: nothing is ever dropped, exact attention.  budget=X: B =
 * floor((bytes(X) - P window g q) / slot) - every, q = one buffered row
 * (d floats, position, m, l), g the query rows per position, slot the
 * per-token bytes below.
 *
 * --budget-scope layer|trace (scope.h, ALGORITHMS.md 4g): B is the total of
 * the scope's ns streams (budget=: ns times one stream's share); each
 * stream keeps its own window and tokens, the group compresses when its
 * total exceeds B, to B - T' (T' = min(ns period, B - ns window)), and the
 * pooled votes of all ns streams compete (a vote is a sum of softmax
 * weights, comparable across heads).  AdaKV's safeguard, floor=alpha
 * (default 0.2): of the K candidates the group keeps (B - T' less the
 * windows), each stream keeps at least floor(alpha K / ns) (scope.h:
 * kv_scope_floor); the streams' counts ride on the halo, one double each.
 *
 * Memory: allocated slots x ((d + dv) floats + index + vote + pooled
 * score) + the buffered rows; the slot arrays are resized to the slots in
 * use after every decision and ingest.
 *
 * Speed (ALGORITHMS.md 4a, Ingest speed): votes are cached per slot and,
 * once the buffer changed, summed afresh only for the tokens older than a
 * row that left it (the newer ones add the new rows' terms: the same sum);
 * pooled scores are cached too and pooled again only where a vote in their
 * window may have changed; a decision takes the lowest keys in one pass
 * and moves each run of kept rows once.  Keys, kept tokens and answers are
 * bitwise those of recomputing everything at every decision. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/search.h"
#include "kernels/held.h"
#include "methods/method.h"
#include "methods/common/scope.h"
#include "methods/common/slots.h"

typedef struct {
    int64_t tokens, window, period, kernel, pool, every, store;
    double floor;
    kv_budget budget;
} snapkv_cfg;
KV_CFG_FITS(snapkv_cfg);

/* per-slot scratch (kv_slots keeps it with its slot through moves and resizes) */
typedef struct {
    double vote, pooled;
} snapkv_slot;

typedef struct {
    kv_method_ctx ctx;
    int64_t B, W, T, kern, E; /* global tokens, window positions, period (T'), pooling kernel, decision spacing */
    int ns;                   /* streams sharing B (scope.h; 1: per stream) */
    double alpha;             /* the floor's fraction of an even share of the kept candidates (scope.h) */
    int64_t f, gcnt;          /* at this decision: the floor, the stream's candidates over all ranks */
    int maxpool;
    int64_t xlast, gheld;     /* the last decision point; tokens held over all ranks since then */
    int64_t seen, ties;       /* tokens ingested; near-tie decisions */
    kv_query_cost cost;   /* method.h: cost */
    kv_slots sl;              /* held in ascending index; scratch: snapkv_slot */
    int stale;                /* the buffer changed since the votes were computed */
    int vfull;                /* every vote to be computed afresh (create, load, a failed computation) */
    int64_t vadd, vrm;        /* since the votes were computed: rows buffered, the newest position that left (-1: none) */
    int64_t px;               /* the decision point the pooled scores were last made at (-1: none) */
    int64_t nrows, rcap;      /* buffered rows, allocated */
    float *bq;                /* their rows (rcap x d), oldest position first */
    int64_t *bp;              /* their positions */
    double *bml;              /* their merged (m, l) */
    kv_store store;           /* how the slots hold their rows (store.h) */
} snapkv_state;

static const kv_param_def snapkv_params[] = {
    KV_PARAM_INT(snapkv_cfg, tokens, 1024, 2, INT32_MAX, "tokens held over all ranks together (after each decision)"),
    KV_PARAM_INT(snapkv_cfg, window, 32, 1, 4096,
                 "observation window, in positions: their queries vote, their tokens are always kept (< tokens)"),
    KV_PARAM_INT(snapkv_cfg, period, 64, 1, INT32_MAX, "tokens between compressions (capped at tokens - window)"),
    KV_PARAM_INT(snapkv_cfg, kernel, 5, 1, 1023, "pooling width over neighbouring positions (odd)"),
    KV_PARAM_ENUM(snapkv_cfg, pool, "avg|max", 0, "pooling of the votes: avg (official default) or max"),
    KV_PARAM_INT(snapkv_cfg, every, 16, 1, INT32_MAX,
                 "tokens between eviction decisions besides every query position (the peak holds up to this many more)"),
    KV_PARAM_DOUBLE(snapkv_cfg, floor, 0.2, 0, 1,
                    "--budget-scope layer|trace: each stream keeps at least this fraction of an even share of the "
                    "kept candidates (AdaKV's alpha)"),
    KV_PARAM_BUDGET(snapkv_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_ENUM(snapkv_cfg, store, KV_STORE_CHOICES, 0, KV_STORE_HELP),
    KV_PARAM_TABLE_END
};

static int64_t slot_bytes(int store, int d, int dv)
{
    return kv_slots_row_bytes_in(store, d, dv, 0, sizeof(snapkv_slot));
}

static int64_t row_bytes(int d)
{
    return (int64_t)d * (int64_t)sizeof(float) + (int64_t)sizeof(int64_t) + 2 * (int64_t)sizeof(double);
}

static int snapkv_cfg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    snapkv_cfg *c = cfg;
    if (c->budget.kind != KV_BUDGET_NONE && kv_spec_has(spec, "tokens"))
        return kv_params_error(snapkv_params, spec, err, "give tokens= or budget=, not both");
    if (c->kernel % 2 == 0)
        return kv_params_error(snapkv_params, spec, err, "kernel=%lld must be odd (centred on the token)",
                               (long long)c->kernel);
    if (c->budget.kind == KV_BUDGET_NONE && c->window >= c->tokens)
        return kv_params_error(snapkv_params, spec, err, "window=%lld must be below tokens=%lld", (long long)c->window,
                               (long long)c->tokens);
    return KV_OK;
}

extern const kv_method_ops kv_method_snapkv;

static void snapkv_free(void *state);

static int64_t group_rows(const kv_method_ctx *ctx) { return ctx->q_group > 0 ? ctx->q_group : 1; }

static int snapkv_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const snapkv_cfg *c = kv_method_cfg(&kv_method_snapkv, spec, err);
    if (!c) return err->code;
    int64_t B = c->tokens, ns = kv_scope_streams(ctx);
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes((int)c->store, ctx->d, ctx->dv), bytes = kv_scope_share_bytes(&c->budget, ctx);
        int64_t buf = c->window * group_rows(ctx) * row_bytes(ctx->d) + kv_store_fixed_of((int)c->store, ctx->d, ctx->dv);
        int64_t rest = bytes - buf; /* one copy, counted on rank 0: B must not depend on P */
        B = rest > 0 ? rest / per - c->every : 0;
        if (B <= c->window)
            return kv_params_error(snapkv_params, spec, err,
                                   "budget of %lld bytes holds %lld tokens, not more than the window of %lld (one takes "
                                   "%lld, plus %lld for the buffered queries, and %lld arriving between "
                                   "decisions are reserved: every=)",
                                   (long long)bytes, (long long)(B > 0 ? B : 0), (long long)c->window, (long long)per,
                                   (long long)buf, (long long)c->every);
        if (B > INT32_MAX)
            return kv_params_error(snapkv_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
        B *= ns;
    } else if (ns > 1 && B <= ns * c->window) {
        return kv_params_error(snapkv_params, spec, err, "tokens=%lld do not exceed the windows of %lld streams (%lld)",
                               (long long)B, (long long)ns, (long long)(ns * c->window));
    }
    int64_t h = c->kernel / 2;
    if (ctx->nranks > 1 && h > 0 && ctx->chunk > 0 && 2 * h > ctx->chunk)
        return kv_params_error(snapkv_params, spec, err,
                               "kernel=%lld is wider than the shard chunk (%lld tokens): the pooling could not see "
                               "its neighbours on other ranks",
                               (long long)c->kernel, (long long)ctx->chunk);
    snapkv_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->B = B;
    s->W = c->window;
    s->ns = (int)ns;
    s->alpha = c->floor;
    s->T = ns * c->period < B - ns * c->window ? ns * c->period : B - ns * c->window;
    s->kern = c->kernel;
    s->maxpool = c->pool == 1;
    s->E = c->every;
    s->stale = s->vfull = 1;
    s->vrm = s->px = -1;
    kv_slots_init(&s->sl, ctx->d, ctx->dv, 0, sizeof(snapkv_slot));
    if (kv_store_init(&s->store, (int)c->store, ctx->d, ctx->dv, ctx->seed, ctx->stream, ctx->rank == 0, err)) {
        free(s);
        return err->code;
    }
    kv_slots_use_store(&s->sl, &s->store);
    *out = s;
    return KV_OK;
}

static snapkv_slot *slot_of(const snapkv_state *s, int64_t i) { return (snapkv_slot *)s->sl.scratch + i; }

#define VOTE_TILE 256 /* slots whose logits are had at a time */

/* The first slot holding a token >= t (slots ascend by index). */
static int64_t slot_at(const kv_slots *sl, int64_t t) { return kv_lower_i64(sl->idx, sl->held, t); }

/* The votes of slots [i0, i1): the terms of buffered rows j0.. (in buffer
 * order) added to 0 (fresh) or to the vote held.  KV_EINTERNAL without
 * memory. */
static int add_votes(snapkv_state *s, int64_t i0, int64_t i1, int64_t j0, int fresh)
{
    kv_slots *sl = &s->sl;
    int64_t nr = s->nrows - j0;
    const double *ml = s->bml + 2 * j0;
    const int64_t *bp = s->bp + j0;
    for (int64_t t0 = i0; t0 < i1; t0 += VOTE_TILE) {
        int64_t n = i1 - t0 < VOTE_TILE ? i1 - t0 : VOTE_TILE;
        const double *a = kv_slots_logits(sl, s->bq + j0 * s->ctx.d, (int)nr, s->ctx.scale, t0, n);
        if (nr && !a) return KV_EINTERNAL;
        for (int64_t t = t0; t < t0 + n; t++) {
            double sum = fresh ? 0 : slot_of(s, t)->vote;
            for (int64_t j = 0; j < nr; j++)
                if (bp[j] > sl->idx[t] && ml[2 * j + 1] > 0) sum += exp(a[j * n + (t - t0)] - ml[2 * j]) / ml[2 * j + 1];
            slot_of(s, t)->vote = sum;
        }
    }
    return KV_OK;
}

/* Every held token's vote under the buffered rows (rows in buffer order),
 * from the keys as held.  A vote is a sum over the rows at positions after
 * its token, oldest first: a token at or after every position that left
 * the buffer since the last computation had none of those rows in its sum,
 * so the rows buffered since are added to the vote held (the same sum, the
 * same bits); older tokens are summed afresh.  KV_EINTERNAL without memory
 * (votes stay stale). */
static int compute_votes(snapkv_state *s)
{
    int64_t i0 = s->vfull ? s->sl.held : slot_at(&s->sl, s->vrm), add = s->vadd < s->nrows ? s->vadd : s->nrows;
    s->vfull = 1; /* until done: a failure leaves some votes half summed */
    if (add_votes(s, 0, i0, 0, 1) || (add && add_votes(s, i0, s->sl.held, s->nrows - add, 0))) return KV_EINTERNAL;
    s->vfull = s->stale = 0;
    s->vadd = 0;
    s->vrm = s->px = -1; /* every pooled score to be made again */
    return KV_OK;
}

static int snapkv_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    snapkv_state *s = state;
    kv_slots *sl = &s->sl;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    if (kv_slots_grow(sl, sl->held + (int64_t)n, "snapkv", err)) return err->code;
    for (size_t i = 0; i < n; i++) {
        int64_t slot = sl->held;
        if (kv_slots_set(sl, (int32_t)slot, K + i * d, V + i * dv, first + (int64_t)i, 0.0))
            return kv_store_refused(&s->store, "snapkv", err);
        sl->held++;
        /* no buffered row has seen it: its vote is 0, as a recomputation gives */
        *slot_of(s, slot) = (snapkv_slot){ 0, 0 };
    }
    s->seen += (int64_t)n;
    kv_slots_resize(sl, sl->held);
    return KV_OK;
}

static int64_t snapkv_every(const void *state) { return ((const snapkv_state *)state)->E; }

static int64_t snapkv_need(void *state, int64_t x, int at_query)
{
    snapkv_state *s = state;
    if (x <= s->xlast || (!at_query && x % s->E)) return 0;
    int64_t held = s->gheld + s->ns * (x - s->xlast);
    s->xlast = x;
    if (held <= s->B) {
        s->gheld = held;
        return 0;
    }
    s->gheld = s->B - s->T;
    s->f = kv_scope_floor(s->alpha, s->gheld - s->ns * (x < s->W ? x : s->W), s->ns);
    return held - s->gheld;
}

static int64_t snapkv_extra_cands(const void *state)
{
    const snapkv_state *s = state;
    return s->ns * s->f;
}

/* Halo: per shard-chunk boundary b = c C (c = 1 .. nb), the votes of the
 * tokens [b - h, b + h), h = kernel / 2, written by their owners. */
static int64_t halo_bounds(const snapkv_state *s, int64_t x)
{
    int64_t h = s->kern / 2, C = s->ctx.chunk;
    if (s->ctx.nranks <= 1 || h == 0 || C <= 0) return 0;
    int64_t nb = (x - 1 + h) / C;
    return nb > 0 ? nb : 0;
}

/* Halo of a stream: the votes at the boundaries, then under a floor its
 * candidates on this rank. */
static size_t snapkv_halo_len(const void *state, int64_t x)
{
    const snapkv_state *s = state;
    return (size_t)(halo_bounds(s, x) * 2 * (s->kern / 2)) + (s->f > 0);
}

static int protected_tok(const snapkv_state *s, int64_t t, int64_t x) { return t >= x - s->W; }

static void snapkv_halo(void *state, int64_t x, double *halo)
{
    snapkv_state *s = state;
    int64_t h = s->kern / 2, C = s->ctx.chunk, nb = halo_bounds(s, x), nc = slot_at(&s->sl, x - s->W);
    if (s->f > 0) halo[nb * 2 * h] = (double)nc;
    if (!nb) return;
    if (s->stale) compute_votes(s); /* out of memory: stale, and decide_cands says so */
    for (int64_t i = 0; i < s->sl.held; i++) {
        int64_t t = s->sl.idx[i], r = t % C, c;
        if (protected_tok(s, t, x)) continue;
        if (r < h) c = t / C;          /* just after boundary c C */
        else if (r >= C - h) c = t / C + 1; /* just before boundary c C */
        else continue;
        if (c < 1 || c > nb) continue;
        halo[(c - 1) * 2 * h + (t - (c * C - h))] = slot_of(s, i)->vote;
    }
}

/* The vote of a neighbour u of a local token: held here (found by the index
 * walk), or on another rank across a chunk boundary (the halo). */
static double halo_vote(const snapkv_state *s, int64_t u, const double *halo, int64_t x)
{
    int64_t h = s->kern / 2, C = s->ctx.chunk, c = (u % C) < h ? u / C : u / C + 1;
    if (!halo || c < 1 || c > halo_bounds(s, x)) return 0;
    return halo[(c - 1) * 2 * h + (u - (c * C - h))];
}

static int mine(const snapkv_state *s, int64_t u)
{
    return s->ctx.nranks <= 1 || s->ctx.chunk <= 0 || (u / s->ctx.chunk) % s->ctx.nranks == s->ctx.rank;
}

/* The pooled score of candidate slot i (a held non-window token).  The
 * neighbours' votes are added in index order, u = t - h .. t + h, wherever
 * they are held (here, or on another rank: the halo), so the sum has the
 * same bits at every P, and tokens whose windows hold the same votes tie
 * exactly (broken by index). */
static double pool_one(const snapkv_state *s, int64_t i, int64_t x, const double *halo)
{
    const int64_t *idx = s->sl.idx;
    int64_t n = s->sl.held, h = s->kern / 2, t = idx[i], j = i;
    while (j > 0 && idx[j - 1] >= t - h) j--; /* the first local slot in the window */
    double sum = 0, best = 0;
    for (int64_t u = t - h > 0 ? t - h : 0; u <= t + h && !protected_tok(s, u, x); u++) {
        double v = 0;
        if (mine(s, u)) {
            if (j < n && idx[j] == u) v = slot_of(s, j++)->vote;
        } else {
            v = halo_vote(s, u, halo, x);
        }
        sum += v;
        if (v > best) best = v;
    }
    return s->maxpool ? best : sum / (double)s->kern;
}

/* 1 if token t's pooling window reaches into another shard chunk (whose
 * votes come through the halo and may have changed since). */
static int near_edge(const snapkv_state *s, int64_t t)
{
    int64_t h = s->kern / 2, C = s->ctx.chunk, r;
    if (s->ctx.nranks <= 1 || C <= 0 || h == 0) return 0;
    r = t % C;
    return r < h || r >= C - h;
}

/* The L lowest keys offered so far: a max-heap of at most L. */
typedef struct {
    kv_evkey *h;
    int n, L;
} lowest_keys;

static void low_sift(lowest_keys *b, int i)
{
    for (;;) {
        int m = i, l = 2 * i + 1, r = l + 1;
        if (l < b->n && kv_evkey_less(b->h[m], b->h[l])) m = l;
        if (r < b->n && kv_evkey_less(b->h[m], b->h[r])) m = r;
        if (m == i) return;
        kv_evkey t = b->h[i];
        b->h[i] = b->h[m];
        b->h[m] = t;
        i = m;
    }
}

static void low_offer(lowest_keys *b, kv_evkey k)
{
    if (b->n == b->L) {
        if (!kv_evkey_less(k, b->h[0])) return;
        b->h[0] = k;
        low_sift(b, 0);
        return;
    }
    int i = b->n++;
    while (i > 0 && kv_evkey_less(b->h[(i - 1) / 2], k)) {
        b->h[i] = b->h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    b->h[i] = k;
}

static int key_cmp(const void *a, const void *b)
{
    kv_evkey x = *(const kv_evkey *)a, y = *(const kv_evkey *)b;
    return kv_evkey_less(x, y) ? -1 : kv_evkey_less(y, x);
}

/* Offer stream k's candidates (the held tokens before the window) with
 * their pooled scores.  A pooled score changes only where a vote in its
 * window did: all after the votes were computed (px < 0); else those a
 * dropped neighbour marked (NaN, apply_one), those whose window reached
 * the observation window at the last decision px (it has moved since), and
 * those next to another rank's chunk (the halo). */
static void offer(snapkv_state *s, int ns, int k, int64_t x, const double *halo, lowest_keys *b)
{
    int64_t nc = slot_at(&s->sl, x - s->W), lo = s->px < 0 ? INT64_MIN : s->px - s->W - s->kern / 2;
    for (int64_t i = 0; i < nc; i++) {
        snapkv_slot *sc = slot_of(s, i);
        int64_t t = s->sl.idx[i];
        if (t >= lo || isnan(sc->pooled) || near_edge(s, t)) sc->pooled = pool_one(s, i, x, halo);
        low_offer(b, kv_scope_key((kv_evkey){ sc->pooled, (double)t }, ns, k));
    }
    s->px = x;
}

static int snapkv_group(const void *state) { return ((const snapkv_state *)state)->ns; }

/* The candidates of the group's ns streams (each with its own halo, of
 * snapkv_halo_len doubles), keys encoded by stream (scope.h). */
static int snapkv_cands(void *const *st, int ns, int64_t x, const double *halo, int L, kv_evkey *keys)
{
    int64_t hl = (int64_t)snapkv_halo_len(st[0], x);
    lowest_keys b = { malloc(sizeof(kv_evkey) * (size_t)(L > 0 ? L : 1)), 0, L };
    if (!b.h) return KV_EINTERNAL;
    for (int k = 0; k < ns; k++) {
        snapkv_state *s = st[k];
        s->gcnt = halo && s->f > 0 ? (int64_t)halo[k * hl + hl - 1] : 0;
        if (s->stale && compute_votes(s)) {
            free(b.h);
            return KV_EINTERNAL;
        }
        offer(s, ns, k, x, halo ? halo + k * hl : NULL, &b);
    }
    qsort(b.h, (size_t)b.n, sizeof *b.h, key_cmp);
    memcpy(keys, b.h, sizeof *keys * (size_t)b.n);
    for (int i = b.n; i < L; i++) keys[i] = KV_EVKEY_NONE;
    free(b.h);
    return KV_OK;
}

/* Slots [from, from + n) to [to, to + n), scratch too. */
static void move_run(snapkv_state *s, int64_t to, int64_t from, int64_t n)
{
    if (n <= 0 || to == from) return;
    kv_slots_copy_rows(&s->sl, to, from, n);
    memmove(slot_of(s, to), slot_of(s, from), sizeof(snapkv_slot) * (size_t)n);
}

/* Drop the candidates whose key goes, keeping the rest in index order: the
 * kept runs between the gaps move once each.  The kept neighbours within
 * kernel/2 of a dropped token get their pooled score marked for pooling
 * again (NaN: offer). */
static void apply_one(snapkv_state *s, int ns, int k, int64_t x, kv_evkey cut, kv_evkey next)
{
    kv_slots *sl = &s->sl;
    int64_t nc = slot_at(sl, x - s->W), h = s->kern / 2, w = 0, rs = 0, until = -1;
    for (int64_t t = 0; t < nc; t++) {
        snapkv_slot *sc = slot_of(s, t);
        int64_t u = sl->idx[t];
        if (!kv_evkey_goes(kv_scope_key((kv_evkey){ sc->pooled, (double)u }, ns, k), cut)) {
            if (u <= until) sc->pooled = NAN;
            continue;
        }
        move_run(s, w, rs, t - rs);
        w += t - rs;
        rs = t + 1;
        for (int64_t j = w - 1; j >= 0 && sl->idx[j] >= u - h; j--) slot_of(s, j)->pooled = NAN;
        until = u + h;
    }
    move_run(s, w, rs, sl->held - rs);
    sl->held = w + sl->held - rs;
    s->ties += kv_evict_near_tie(cut, next);
    kv_slots_resize(sl, sl->held);
}

static int snapkv_apply(void *const *st, int ns, int64_t x, const kv_evkey *merged, int64_t need)
{
    const snapkv_state *s0 = st[0];
    kv_evkey cut[ns], next = KV_EVKEY_NONE;
    int64_t cnt[ns];
    memset(cnt, 0, sizeof cnt); /* ns >= 1: quiets a maybe-uninitialized */
    for (int k = 0; k < ns; k++) cnt[k] = ((snapkv_state *)st[k])->gcnt;
    if (kv_scope_floor_cuts(merged, need + 1 + ns * s0->f, ns, need, cnt, s0->f, cut, &next)) return KV_EINTERNAL;
    for (int k = 0; k < ns; k++) apply_one(st[k], ns, k, x, cut[k], next);
    return KV_OK;
}

static int snapkv_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    snapkv_state *s = state;
    (void)p; /* every held token is < p */
    kv_slots_cost(&s->sl, nq, &s->cost);
    return kv_slots_attn(&s->sl, Q, nq, s->ctx.scale, st);
}

/* Distinct positions among the buffered rows. */
static int64_t buffered_positions(const snapkv_state *s)
{
    int64_t np = 0;
    for (int64_t j = 0; j < s->nrows; j++) np += j == 0 || s->bp[j] != s->bp[j - 1];
    return np;
}

/* Buffer the call's rows with their global (m, l); only the last W
 * positions stay (the oldest leaves first, so the buffer never holds more
 * than W positions' rows). */
static int snapkv_feedback(void *state, const float *Q, int nq, int64_t p, const double *ml)
{
    snapkv_state *s = state;
    size_t d = (size_t)s->ctx.d;
    if (nq <= 0) return KV_OK;
    int64_t np = buffered_positions(s);
    if (np > 0 && np + (s->bp[s->nrows - 1] != p) > s->W) { /* the oldest position leaves */
        int64_t k = 1;
        while (k < s->nrows && s->bp[k] == s->bp[0]) k++;
        s->vrm = s->bp[0]; /* positions ascend: the newest that left */
        memmove(s->bq, s->bq + (size_t)k * d, sizeof(float) * d * (size_t)(s->nrows - k));
        memmove(s->bp, s->bp + k, sizeof(int64_t) * (size_t)(s->nrows - k));
        memmove(s->bml, s->bml + 2 * k, sizeof(double) * 2 * (size_t)(s->nrows - k));
        s->nrows -= k;
    }
    if (s->nrows + nq != s->rcap) { /* exactly the rows held: what bytes() counts is what is allocated */
        int64_t cap = s->nrows + nq;
        float *q = realloc(s->bq, sizeof(float) * d * (size_t)cap);
        if (!q) return KV_EINTERNAL;
        s->bq = q;
        int64_t *bp = realloc(s->bp, sizeof(int64_t) * (size_t)cap);
        if (!bp) return KV_EINTERNAL;
        s->bp = bp;
        double *m = realloc(s->bml, sizeof(double) * 2 * (size_t)cap);
        if (!m) return KV_EINTERNAL;
        s->bml = m;
        s->rcap = cap;
    }
    memcpy(s->bq + (size_t)s->nrows * d, Q, sizeof(float) * d * (size_t)nq);
    memcpy(s->bml + 2 * s->nrows, ml, sizeof(double) * 2 * (size_t)nq);
    for (int q = 0; q < nq; q++) s->bp[s->nrows + q] = p;
    s->nrows += nq;
    s->vadd += nq;
    s->stale = 1;
    return KV_OK;
}

static void snapkv_cost(const void *state, kv_query_cost *c)
{
    *c = ((const snapkv_state *)state)->cost;
}

static size_t snapkv_bytes(const void *state)
{
    const snapkv_state *s = state;
    /* the buffered rows once, on rank 0 (see the header) */
    return kv_slots_bytes(&s->sl) + (s->ctx.rank == 0 ? (size_t)(s->rcap * row_bytes(s->ctx.d)) : 0) +
           (size_t)kv_store_fixed_bytes(&s->store);
}

static void snapkv_extra(const void *state, kv_method_extra *x)
{
    const snapkv_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->sl.held;
    x->near_ties = s->ties;
}

static void snapkv_free(void *state)
{
    snapkv_state *s = state;
    if (!s) return;
    kv_slots_free(&s->sl);
    kv_store_free(&s->store);
    free(s->bq);
    free(s->bp);
    free(s->bml);
    free(s);
}

/* Counters, the buffered rows, the held tokens (index order).  Votes and
 * pooled scores are not saved: a recomputation gives the same numbers. */
static void snapkv_save(const void *state, kv_buf *out)
{
    const snapkv_state *s = state;
    kv_buf_put_i64(out, s->xlast);
    kv_buf_put_i64(out, s->gheld);
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_i64(out, s->ties);
    kv_buf_put_arr(out, s->bq, (size_t)(s->nrows * s->ctx.d) * sizeof(float));
    kv_buf_put_arr(out, s->bp, (size_t)s->nrows * sizeof(int64_t));
    kv_buf_put_arr(out, s->bml, (size_t)(2 * s->nrows) * sizeof(double));
    kv_slots_save(&s->sl, out);
}

/* Counters in range, rows finite at non-decreasing positions in 1..n_total
 * over at most W positions, merged (m, l) with l >= 0 finite and m finite
 * iff l > 0 (else -inf), the held indices ascending. */
static int snapkv_valid(const snapkv_state *s, const snapkv_state *t, size_t nbq, size_t nbp, size_t nbml)
{
    int64_t n = t->sl.held, lim = kv_shard_limit(&s->ctx);
    size_t nb = (size_t)t->nrows, d = (size_t)s->ctx.d;
    if (t->xlast < 0 || t->xlast > s->ctx.n_total || t->gheld < 0 || t->gheld > s->B || n > t->gheld ||
        t->seen < n || t->seen > lim || t->ties < 0 || t->ties > t->xlast)
        return 0;
    if (nbq != nb * d || nbp != nb || nbml != 2 * nb || (nb && !kv_all_finite(t->bq, nb * d))) return 0;
    for (size_t j = 0; j < nb; j++) {
        const double *ml = t->bml + 2 * j;
        if (t->bp[j] < 1 || t->bp[j] > s->ctx.n_total || (j && t->bp[j] < t->bp[j - 1]) || !isfinite(ml[1]) ||
            !kv_merged_l_ok(ml[1], s->ctx.n_total) || (ml[1] > 0 ? !isfinite(ml[0]) : ml[0] != -INFINITY))
            return 0;
    }
    if (buffered_positions(t) > s->W) return 0;
    for (int64_t i = 1; i < n; i++)
        if (t->sl.idx[i] <= t->sl.idx[i - 1]) return 0;
    return 1;
}

static int snapkv_load(void *state, kv_rd *in, kv_err *err)
{
    snapkv_state *s = state, t = *s;
    int64_t lim = kv_shard_limit(&s->ctx), most = s->B + s->E < lim ? s->B + s->E : lim;
    size_t nbq = 0, nbp = 0, nbml = 0, rmax = (size_t)(s->W * 4096);
    void *bq = NULL, *bp = NULL, *bml = NULL;
    if (kv_rd_i64(in, &t.xlast, err) || kv_rd_i64(in, &t.gheld, err) || kv_rd_i64(in, &t.seen, err) ||
        kv_rd_i64(in, &t.ties, err) || kv_rd_arr(in, &bq, sizeof(float), rmax * (size_t)s->ctx.d, &nbq, err) ||
        kv_rd_arr(in, &bp, sizeof(int64_t), rmax, &nbp, err) ||
        kv_rd_arr(in, &bml, sizeof(double), 2 * rmax, &nbml, err) ||
        kv_slots_load(&t.sl, &s->sl, in, most, s->ctx.n_total, "snapkv", err)) {
        free(bq);
        free(bp);
        free(bml);
        return err->code;
    }
    t.bq = bq;
    t.bp = bp;
    t.bml = bml;
    t.nrows = t.rcap = (int64_t)nbp;
    t.stale = t.vfull = 1;
    t.vadd = 0;
    t.vrm = t.px = -1;
    if (!snapkv_valid(s, &t, nbq, nbp, nbml)) {
        kv_slots_free(&t.sl);
        free(bq);
        free(bp);
        free(bml);
        return kv_seterr(err, KV_EINPUT, "checkpoint: snapkv state is inconsistent");
    }
    kv_slots_free(&s->sl);
    free(s->bq);
    free(s->bp);
    free(s->bml);
    *s = t;
    return KV_OK;
}

static int64_t snapkv_max_bytes(const void *state)
{
    const snapkv_state *s = state;
    int64_t held = kv_scope_held_max(&s->ctx, s->B, s->E, kv_shard_limit(&s->ctx));
    return held * slot_bytes(s->store.which, s->ctx.d, s->ctx.dv) +
           (s->ctx.rank == 0 ? s->W * group_rows(&s->ctx) * row_bytes(s->ctx.d) : 0) + kv_store_fixed_bytes(&s->store);
}

const kv_method_ops kv_method_snapkv = {
    .name = "snapkv",
    .kind = "eviction",
    .summary = "SnapKV for decoding: every period tokens, keep the observation window and the top tokens by the "
               "pooled attention of its queries",
    .budget = "tokens= (or budget= bytes) over all ranks together, held after each decision",
    .params = snapkv_params,
    .cfg_size = sizeof(snapkv_cfg),
    .check = snapkv_cfg_check,
    .create = snapkv_create,
    .ingest = snapkv_ingest,
    .partial = snapkv_partial,
    .feedback = snapkv_feedback,
    .decide_every = snapkv_every,
    .decide_group = snapkv_group,
    .decide_need = snapkv_need,
    .decide_extra = snapkv_extra_cands,
    .decide_halo_len = snapkv_halo_len,
    .decide_halo = snapkv_halo,
    .decide_cands = snapkv_cands,
    .decide_apply = snapkv_apply,
    .bytes = snapkv_bytes,
    .extra = snapkv_extra,
    .free = snapkv_free,
    .save = snapkv_save,
    .load = snapkv_load,
    .max_bytes = snapkv_max_bytes,
    .cost = snapkv_cost,
    .scoped = 1,
    .conform = { "tokens=120;tokens=90,window=3,period=20,kernel=3,pool=max,every=7;tokens=100,store=kivi8;tokens=80,store=tq2", KV_PINV_ROUNDING },
};
