/* snapkv_decide.c - SnapKV's global decision (ALGORITHMS.md 4c; snapkv.c's header
 * gives the rule): the votes of the held tokens under the buffered query
 * rows, their pooling over neighbouring positions (across shard chunks
 * through the halo), the lowest pooled keys offered as candidates, and the
 * drops of a merged decision, kept tokens staying in index order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/held.h"
#include "methods/common/scope.h"
#include "methods/snapkv/snapkv_state.h"

#define VOTE_TILE 256 /* slots whose logits are had at a time */

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

int64_t snapkv_every(const void *state) { return ((const snapkv_state *)state)->E; }

int64_t snapkv_need(void *state, int64_t x, int at_query)
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

int64_t snapkv_extra_cands(const void *state)
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
size_t snapkv_halo_len(const void *state, int64_t x)
{
    const snapkv_state *s = state;
    return (size_t)(halo_bounds(s, x) * 2 * (s->kern / 2)) + (s->f > 0);
}

static int protected_tok(const snapkv_state *s, int64_t t, int64_t x) { return t >= x - s->W; }

void snapkv_halo(void *state, int64_t x, double *halo)
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

int snapkv_group(const void *state) { return ((const snapkv_state *)state)->ns; }

/* The candidates of the group's ns streams (each with its own halo, of
 * snapkv_halo_len doubles), keys encoded by stream (scope.h). */
int snapkv_cands(void *const *st, int ns, int64_t x, const double *halo, int L, kv_evkey *keys)
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

int snapkv_apply(void *const *st, int ns, int64_t x, const kv_evkey *merged, int64_t need)
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
