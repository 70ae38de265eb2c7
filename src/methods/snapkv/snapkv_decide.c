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

/* The vote of slot t from the logits a (rows j0.. of the buffer, n slots a
 * row, t at column c): the terms of buffered rows jf.. (in buffer order)
 * added to 0 (fresh) or to the vote held. */
static void add_vote(snapkv_state *s, int64_t t, const double *a, int64_t n, int64_t c, int64_t j0, int64_t jf,
                     int fresh)
{
    const double *ml = s->bml;
    const int64_t *bp = s->bp;
    int64_t tok = s->sl.idx[t];
    double sum = fresh ? 0 : slot_of(s, t)->vote;
    for (int64_t j = jf; j < s->nrows; j++)
        if (bp[j] > tok && ml[2 * j + 1] > 0) sum += exp(a[(j - j0) * n + c] - ml[2 * j]) / ml[2 * j + 1];
    slot_of(s, t)->vote = sum;
}

/* Every held token's vote under the buffered rows (rows in buffer order),
 * from the keys as held, a tile of slots at a time (slots are in any
 * order; a vote depends on its token alone).  A vote is a sum over the
 * rows at positions after its token, oldest first: a token at or after
 * every position that left the buffer since the last computation had none
 * of those rows in its sum, so the rows buffered since are added to the
 * vote held (the same sum, the same bits); older tokens are summed afresh.
 * KV_EINTERNAL without memory (votes stay stale). */
static int compute_votes(snapkv_state *s)
{
    kv_slots *sl = &s->sl;
    int64_t add = s->vadd < s->nrows ? s->vadd : s->nrows, ja = s->nrows - add;
    int full = s->vfull;
    s->vfull = 1; /* until done: a failure leaves some votes half summed */
    for (int64_t t0 = 0; t0 < sl->held; t0 += VOTE_TILE) {
        int64_t n = sl->held - t0 < VOTE_TILE ? sl->held - t0 : VOTE_TILE, fresh = 0;
        for (int64_t t = t0; t < t0 + n && !fresh; t++) fresh = full || sl->idx[t] < s->vrm;
        int64_t j0 = fresh ? 0 : ja; /* the rows this tile needs the logits of */
        if (j0 == s->nrows && !fresh) continue; /* no row to add */
        const double *a = kv_slots_logits(sl, s->bq + j0 * s->ctx.d, (int)(s->nrows - j0), s->ctx.scale, t0, n);
        if (s->nrows > j0 && !a) return KV_EINTERNAL;
        for (int64_t t = t0; t < t0 + n; t++) {
            int f = full || sl->idx[t] < s->vrm;
            add_vote(s, t, a, n, t - t0, j0, f ? 0 : ja, f);
        }
    }
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
    int64_t h = s->kern / 2, C = s->ctx.chunk, nb = halo_bounds(s, x), nc = pos_at(s, x - s->W);
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

/* The pooled score of the candidate at order position i (a held non-window token).  The
 * neighbours' votes are added in index order, u = t - h .. t + h, wherever
 * they are held (here, or on another rank: the halo), so the sum has the
 * same bits at every P, and tokens whose windows hold the same votes tie
 * exactly (broken by index). */
static double pool_one(const snapkv_state *s, int64_t i, int64_t x, const double *halo)
{
    int64_t n = s->sl.held, h = s->kern / 2, t = tok_at(s, i), j = i;
    while (j > 0 && tok_at(s, j - 1) >= t - h) j--; /* the first local token in the window */
    double sum = 0, best = 0;
    for (int64_t u = t - h > 0 ? t - h : 0; u <= t + h && !protected_tok(s, u, x); u++) {
        double v = 0;
        if (mine(s, u)) {
            if (j < n && tok_at(s, j) == u) v = ord_slot(s, j++)->vote;
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
    int64_t nc = pos_at(s, x - s->W), lo = s->px < 0 ? INT64_MIN : s->px - s->W - s->kern / 2;
    for (int64_t i = 0; i < nc; i++) {
        snapkv_slot *sc = ord_slot(s, i);
        int64_t t = tok_at(s, i);
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

static void reverse(int32_t *a, int64_t n)
{
    for (int64_t i = 0, j = n - 1; i < j; i++, j--) {
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* The slots of ord[held..old) went: the kept slots at or above held move
 * into the gone ones below it (a row each, scratch too), and their order
 * entries follow them (found by index).  The slot order changes, the order
 * by index does not. */
static void fill_gaps(snapkv_state *s, int64_t held, int64_t old)
{
    kv_slots *sl = &s->sl;
    int64_t top = old; /* slots >= top are known gone or moved */
    for (int64_t g = held; g < old; g++) {
        int32_t hole = s->ord[g];
        if (hole >= held) continue;
        while (top > held) { /* the highest slot still kept */
            int64_t t = sl->idx[top - 1], p = pos_at(s, t);
            if (p < held && s->ord[p] == top - 1) break;
            top--;
        }
        int32_t from = (int32_t)(top - 1);
        int64_t p = pos_at(s, sl->idx[from]);
        kv_slots_copy_row(sl, hole, from);
        *slot_of(s, hole) = *slot_of(s, from);
        s->ord[p] = hole;
        top--;
    }
}

/* Drop the candidates whose key goes, keeping the rest in index order
 * (ord); the kept rows above the new count fill the gone slots below it.
 * The kept neighbours within kernel/2 of a dropped token get their pooled
 * score marked for pooling again (NaN: offer). */
static void apply_one(snapkv_state *s, int ns, int k, int64_t x, kv_evkey cut, kv_evkey next)
{
    kv_slots *sl = &s->sl;
    int32_t *ord = s->ord;
    int64_t nc = pos_at(s, x - s->W), h = s->kern / 2, w = 0, until = -1, old = sl->held;
    for (int64_t i = 0; i < nc; i++) { /* kept to ord[0..w), the gone in ord[w..i] */
        int32_t slot = ord[i];
        snapkv_slot *sc = slot_of(s, slot);
        int64_t u = sl->idx[slot];
        if (!kv_evkey_goes(kv_scope_key((kv_evkey){ sc->pooled, (double)u }, ns, k), cut)) {
            if (u <= until) sc->pooled = NAN;
            ord[i] = ord[w]; /* a gone one (or itself) */
            ord[w++] = slot;
            continue;
        }
        for (int64_t j = w - 1; j >= 0 && sl->idx[ord[j]] >= u - h; j--) slot_of(s, ord[j])->pooled = NAN;
        until = u + h;
    }
    /* ord[w..nc) gone, ord[nc..old) the window: rotate the gone to the end */
    reverse(ord + w, nc - w);
    reverse(ord + nc, old - nc);
    reverse(ord + w, old - w);
    sl->held = w + old - nc;
    fill_gaps(s, sl->held, old);
    s->ties += kv_evict_near_tie(cut, next);
    kv_slots_resize(sl, sl->held);
    snapkv_fit_ord(s); /* a shrink: cannot fail */
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
