/* slots.c - held rows, their heaps and their checkpoint form (slots.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/search.h"
#include "kernels/held.h"
#include "kernels/partial.h"
#include "methods/common/quant.h"
#include "methods/common/slots.h"

int64_t kv_slots_row_bytes(int d, int dv, int nheaps, size_t scratch_per)
{
    int64_t b = (int64_t)(d + dv) * (int64_t)sizeof(float) + (int64_t)sizeof(int64_t);
    if (nheaps > 0) b += (int64_t)sizeof(double) + (1 + nheaps) * (int64_t)sizeof(int32_t);
    return b + (int64_t)scratch_per;
}

int64_t kv_slots_row_bytes_in(int store, int d, int dv, int nheaps, size_t scratch_per)
{
    return kv_slots_row_bytes(d, dv, nheaps, scratch_per) + (int64_t)kv_store_row_bytes(store, d, dv) -
           (int64_t)(d + dv) * (int64_t)sizeof(float);
}

static int64_t row_bytes(const kv_slots *s)
{
    return kv_slots_row_bytes_in(s->store ? s->store->which : 0, s->d, s->dv, s->nheaps, s->scratch_per);
}

void kv_slots_use_store(kv_slots *s, const kv_store *store)
{
    s->store = kv_store_coded(store) ? store : NULL;
}

void kv_slots_init(kv_slots *s, int d, int dv, int nheaps, size_t scratch_per)
{
    memset(s, 0, sizeof *s);
    s->d = d;
    s->dv = dv;
    s->nheaps = nheaps;
    s->scratch_per = scratch_per;
}

void kv_slots_free(kv_slots *s)
{
    free(s->K); free(s->V); free(s->idx); free(s->score); free(s->pos); free(s->heap[0]); free(s->heap[1]);
    free(s->scratch); free(s->code); free(s->tk); free(s->tv); free(s->tq); free(s->lg);
    s->K = s->V = NULL; s->idx = NULL; s->score = NULL; s->pos = s->heap[0] = s->heap[1] = NULL;
    s->scratch = NULL; s->code = NULL; s->tk = s->tv = s->tq = NULL; s->lg = NULL;
    s->qcap = s->lgcap = 0;
    s->cap = s->phys = 0;
}

size_t kv_slots_bytes(const kv_slots *s)
{
    return (size_t)s->cap * (size_t)row_bytes(s);
}

int kv_slots_resize(kv_slots *s, int64_t rows)
{
    if (rows == s->cap) return KV_OK;
    if (rows == 0) {
        kv_slots_free(s);
        return KV_OK;
    }
    if (rows <= s->phys && rows >= s->phys - s->phys / 8) { /* within the arrays as they are */
        s->cap = rows;
        return KV_OK;
    }
    size_t N = (size_t)rows;
    int bad = 0;
#define RE(p, per) do { void *q = realloc(p, sizeof *(p) * (per) * N); if (q) p = q; else bad = 1; } while (0)
    if (s->store) {
        RE(s->code, s->store->row);
    } else {
        RE(s->K, (size_t)s->d);
        RE(s->V, (size_t)s->dv);
    }
    RE(s->idx, 1);
    if (s->nheaps > 0) {
        RE(s->score, 1);
        RE(s->pos, 1);
        for (int w = 0; w < s->nheaps; w++) RE(s->heap[w], 1);
    }
    if (s->scratch_per) {
        void *q = realloc(s->scratch, s->scratch_per * N);
        if (q) s->scratch = q; else bad = 1;
    }
#undef RE
    /* a failed grow leaves every array >= the old cap; after a shrink, even
     * a partly failed one, every array holds >= rows, and some only rows */
    if (bad && rows > s->cap) return KV_EINTERNAL;
    s->cap = s->phys = rows; /* a partly failed shrink: some arrays larger, all >= rows */
    return KV_OK;
}

int kv_slots_grow(kv_slots *s, int64_t need, const char *who, kv_err *err)
{
    if (need > s->cap && kv_slots_resize(s, need))
        return kv_seterr(err, KV_EINTERNAL, "%s: out of memory holding %lld tokens", who, (long long)need);
    return KV_OK;
}

int kv_slots_set(kv_slots *s, int32_t slot, const float *k, const float *v, int64_t t, double sc)
{
    size_t d = (size_t)s->d, dv = (size_t)s->dv;
    s->idx[slot] = t;
    if (s->nheaps > 0) s->score[slot] = sc;
    if (s->store) return kv_store_encode((kv_store *)s->store, k, v, s->code + (size_t)slot * s->store->row);
    memcpy(s->K + slot * d, k, sizeof(float) * d);
    memcpy(s->V + slot * dv, v, sizeof(float) * dv);
    return 0;
}

void kv_slots_copy_row(kv_slots *s, int64_t to, int64_t from)
{
    size_t d = (size_t)s->d, dv = (size_t)s->dv;
    s->idx[to] = s->idx[from];
    if (s->store) {
        memmove(s->code + (size_t)to * s->store->row, s->code + (size_t)from * s->store->row, s->store->row);
        return;
    }
    memmove(s->K + to * d, s->K + from * d, sizeof(float) * d);
    memmove(s->V + to * dv, s->V + from * dv, sizeof(float) * dv);
}

void kv_slots_copy_rows(kv_slots *s, int64_t to, int64_t from, int64_t n)
{
    size_t d = (size_t)s->d, dv = (size_t)s->dv, m = (size_t)n;
    if (n <= 0 || to == from) return;
    memmove(s->idx + to, s->idx + from, sizeof(int64_t) * m);
    if (s->store) {
        memmove(s->code + (size_t)to * s->store->row, s->code + (size_t)from * s->store->row, s->store->row * m);
        return;
    }
    memmove(s->K + to * d, s->K + from * d, sizeof(float) * d * m);
    memmove(s->V + to * dv, s->V + from * dv, sizeof(float) * dv * m);
}

/* scratch: tiles of KV_SLOTS_TILE rows, nq prepared queries, m logits */
static int scratch(kv_slots *s, int nq, size_t m)
{
    if (!s->tk) {
        s->tk = malloc(sizeof(float) * KV_SLOTS_TILE * (size_t)s->d);
        s->tv = malloc(sizeof(float) * KV_SLOTS_TILE * (size_t)s->dv);
        if (!s->tk || !s->tv) return -1;
    }
    if ((size_t)nq > s->qcap) {
        float *q = realloc(s->tq, sizeof(float) * (size_t)nq * (size_t)s->d);
        if (!q) return -1;
        s->tq = q;
        s->qcap = (size_t)nq;
    }
    if (m > s->lgcap) {
        double *l = realloc(s->lg, sizeof(double) * m);
        if (!l) return -1;
        s->lg = l;
        s->lgcap = m;
    }
    return 0;
}

/* lg[q * ld + t] = logit of query q (prepared) and slot t0 + t, t < n */
static void logits(kv_slots *s, const float *Qs, int nq, double scale, int64_t t0, int64_t n, double *lg, size_t ld)
{
    if (!s->store) {
        kv_held_logits(Qs, nq, s->K + (size_t)t0 * s->d, (size_t)n, s->d, scale, lg, ld);
        return;
    }
    for (int64_t a = 0; a < n; a += KV_SLOTS_TILE) {
        int64_t nt = n - a < KV_SLOTS_TILE ? n - a : KV_SLOTS_TILE;
        kv_store_keys(s->store, s->code + (size_t)(t0 + a) * s->store->row, (size_t)nt, s->tk);
        kv_held_logits(Qs, nq, s->tk, (size_t)nt, s->d, scale, lg + a, ld);
    }
}

const double *kv_slots_logits(kv_slots *s, const float *Q, int nq, double scale, int64_t t0, int64_t n)
{
    if (nq <= 0 || n <= 0) return s->lg;
    if (scratch(s, nq, (size_t)nq * (size_t)n)) return NULL;
    const float *Qs = s->store ? kv_store_queries(s->store, Q, nq, s->tq) : Q;
    logits(s, Qs, nq, scale, t0, n, s->lg, (size_t)n);
    return s->lg;
}

/* Coded rows: decoded a tile at a time and folded by kv_attn_held's own
 * tile step at its tile cuts, so a store holding the numbers exactly gives
 * kv_attn_held's bits. */
_Static_assert(KV_SLOTS_TILE == KV_HELD_TILE, "decode tiles are kv_attn_held's tiles");

int kv_slots_attn(kv_slots *s, const float *Q, int nq, double scale, double *st)
{
    if (!s->store) return kv_attn_held(Q, nq, s->K, s->V, (size_t)s->held, s->d, s->dv, scale, st);
    size_t sl = KV_PSTATE_LEN(s->dv), n = (size_t)s->held, row = s->store->row;
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, s->dv);
    if (!n || nq <= 0) return KV_OK;
    if (scratch(s, nq, 0)) return KV_EINTERNAL;
    const float *Qs = kv_store_queries(s->store, Q, nq, s->tq);
    for (size_t a = 0; a < n; a += KV_SLOTS_TILE) {
        int nt = n - a < KV_SLOTS_TILE ? (int)(n - a) : KV_SLOTS_TILE;
        kv_store_keys(s->store, s->code + a * row, (size_t)nt, s->tk);
        kv_store_vals(s->store, s->code + a * row, (size_t)nt, s->tv);
        kv_held_fold(Qs, nq, s->tk, s->tv, nt, s->d, s->dv, scale, st);
    }
    kv_store_finish(s->store, st, nq);
    return KV_OK;
}

/* ---- min-heaps over slots: w = 0 by (score, index), w = 1 by index ---- */
/* 1 if slot a goes before slot b: computed without branches (a heap's
 * child choice is a coin toss the branch predictor loses half the time) */
static inline int before(const kv_slots *s, int w, int32_t a, int32_t b)
{
    if (w) return s->idx[a] < s->idx[b];
    double sa = s->score[a], sb = s->score[b];
    return (sa < sb) | ((sa == sb) & (s->idx[a] < s->idx[b]));
}

static void put(kv_slots *s, int w, int64_t i, int32_t slot)
{
    s->heap[w][i] = slot;
    s->pos[slot] = w ? (int32_t)(-1 - i) : (int32_t)i;
}

/* The standard sift-down of heap w's place i (the smaller child, the left
 * one on a tie, moves up while it goes before the sifted slot), moving the
 * heap array only: the caller sets pos. */
static inline int64_t sift_raw(kv_slots *s, int w, int64_t i)
{
    int32_t *a = s->heap[w], x = a[i];
    int64_t n = s->hsize[w];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n) c += before(s, w, a[c + 1], a[c]);
        if (!before(s, w, a[c], x)) break;
        a[i] = a[c];
        i = c;
    }
    a[i] = x;
    return i;
}

static void sift_down(kv_slots *s, int w, int64_t i)
{
    int32_t *a = s->heap[w];
    int64_t i0 = i, end = sift_raw(s, w, i);
    /* the places that changed: the path from i0 down to end */
    for (i = end; i > i0; i = (i - 1) / 2) put(s, w, i, a[i]);
    put(s, w, i0, a[i0]);
}

void kv_slots_push(kv_slots *s, int w, int32_t slot)
{
    int32_t *a = s->heap[w];
    int64_t i = s->hsize[w]++;
    while (i > 0 && before(s, w, slot, a[(i - 1) / 2])) {
        put(s, w, i, a[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    put(s, w, i, slot);
}

int32_t kv_slots_pop(kv_slots *s, int w)
{
    int32_t *a = s->heap[w], top = a[0];
    int64_t n = --s->hsize[w];
    if (n > 0) {
        put(s, w, 0, a[n]);
        sift_down(s, w, 0);
    }
    return top;
}

int32_t kv_slots_top(const kv_slots *s, int w)
{
    return s->heap[w][0];
}

void kv_slots_reheap(kv_slots *s)
{
    s->hsize[0] = s->held;
    for (int64_t i = 0; i < s->held; i++) put(s, 0, i, (int32_t)i);
    kv_slots_heapify(s, 0);
}

/* A heap place's key by value, for heapify: the two children's keys sit
 * side by side, so each level of a sift waits for one load, not two. */
typedef struct {
    double sc;
    int64_t ix;
} hkey;
_Static_assert(sizeof(hkey) == KV_SLOTS_SHUFFLE_SCRATCH, "the per-slot scratch kv_slots_heapify_shuffled asks for");

static inline int hkey_before(hkey a, hkey b) { return (a.sc < b.sc) | ((a.sc == b.sc) & (a.ix < b.ix)); }

/* sift_raw on the key copy, without its data-dependent exit: down the
 * path of smaller children to a leaf (the path sift_raw takes), the hole h
 * following while the keys met go before x; below where sift_raw stops
 * they no longer do (keys only grow down a heap path), so the moves are
 * the same.  p: the path's place. */
typedef struct {
    hkey x;
    int32_t xs;
    int go;
    int64_t h, p;
} hsift;

static inline hsift hsift_at(const hkey *k, const int32_t *a, int64_t i) { return (hsift){ k[i], a[i], 1, i, i }; }

static inline void hsift_step(hkey *k, int32_t *a, int64_t n, hsift *u)
{
    int64_t c = 2 * u->p + 1, r = c + 1 < n ? c + 1 : c;
    c += hkey_before(k[r], k[c]);
    u->go &= hkey_before(k[c], u->x);
    int64_t src = u->h + ((c - u->h) & -(int64_t)u->go); /* c while going, else h: no branch */
    k[u->h] = k[src];
    a[u->h] = a[src];
    u->h = src;
    u->p = c;
}

/* the rest of the path, then x into the hole */
static inline void hsift_end(hkey *k, int32_t *a, int64_t n, hsift *u)
{
    while (2 * u->p + 1 < n) hsift_step(k, a, n, u);
    k[u->h] = u->x;
    a[u->h] = u->xs;
}

/* Floyd's heapify: each place from the last parent up sifted down in turn
 * (sift_raw's moves: an early stop, cheap where the order changed little,
 * as h2o's added scores leave it), then every place's pos once. */
void kv_slots_heapify(kv_slots *s, int w)
{
    int64_t n = s->hsize[w];
    for (int64_t i = n / 2 - 1; i >= 0; i--) sift_raw(s, w, i);
    for (int64_t i = 0; i < n; i++) put(s, w, i, s->heap[w][i]);
}

/* The same heap for keys in no particular order (tova's replaced scores),
 * where most sifts go deep and the early stop is a coin toss the branch
 * predictor loses: on a copy of the keys in heap order, in the slots'
 * per-slot scratch (counted in the memory figure), and without branches
 * on them. */
void kv_slots_heapify_shuffled(kv_slots *s, int w)
{
    int64_t n = s->hsize[w];
    int32_t *a = s->heap[w];
    if (s->scratch_per < sizeof(hkey) || !s->scratch || n > s->cap) { /* no scratch: in place */
        for (int64_t i = n / 2 - 1; i >= 0; i--) sift_raw(s, w, i);
    } else {
        hkey *k = s->scratch; /* n <= cap slots of scratch_per >= 16 bytes: room for n keys */
        for (int64_t i = 0; i < n; i++) k[i] = (hkey){ w ? 0.0 : s->score[a[i]], s->idx[a[i]] };
        /* two places at a time (i and i - 1: disjoint subtrees for i >= 2,
         * each already heaps below), so one sift's loads overlap the
         * other's: the same moves as one at a time */
        int64_t i = n / 2 - 1;
        for (; i >= 2; i -= 2) {
            hsift u = hsift_at(k, a, i), v = hsift_at(k, a, i - 1);
            while (2 * u.p + 1 < n && 2 * v.p + 1 < n) {
                hsift_step(k, a, n, &u);
                hsift_step(k, a, n, &v);
            }
            hsift_end(k, a, n, &u);
            hsift_end(k, a, n, &v);
        }
        for (; i >= 0; i--) {
            hsift u = hsift_at(k, a, i);
            hsift_end(k, a, n, &u);
        }
    }
    for (int64_t i = 0; i < n; i++) put(s, w, i, a[i]);
}

/* The frontier of kv_slots_lowest: a min-heap of places of heap 0, by key. */
static int fr_less(const kv_slots *s, int64_t i, int64_t j)
{
    return kv_evkey_less(kv_slots_key(s, s->heap[0][i]), kv_slots_key(s, s->heap[0][j]));
}

static void fr_push(const kv_slots *s, int64_t *fr, int64_t *nf, int64_t place)
{
    int64_t j = (*nf)++;
    fr[j] = place;
    while (j > 0 && fr_less(s, fr[j], fr[(j - 1) / 2])) {
        int64_t t = fr[j];
        fr[j] = fr[(j - 1) / 2];
        fr[(j - 1) / 2] = t;
        j = (j - 1) / 2;
    }
}

static int64_t fr_pop(const kv_slots *s, int64_t *fr, int64_t *nf)
{
    int64_t top = fr[0], j = 0;
    fr[0] = fr[--*nf];
    for (;;) {
        int64_t m = j, l = 2 * j + 1, r = l + 1;
        if (l < *nf && fr_less(s, fr[l], fr[m])) m = l;
        if (r < *nf && fr_less(s, fr[r], fr[m])) m = r;
        if (m == j) break;
        int64_t t = fr[j];
        fr[j] = fr[m];
        fr[m] = t;
        j = m;
    }
    return top;
}

int kv_slots_lowest(const kv_slots *s, int L, kv_evkey *out)
{
    /* the next lowest key of heap 0 is always at a place whose parent was
     * taken already: keep those places in a small heap of their own */
    int64_t n = s->hsize[0], nf = 0;
    int64_t *fr = malloc(sizeof(int64_t) * ((size_t)L + 2));
    if (!fr) return KV_EINTERNAL;
    if (n > 0) fr[nf++] = 0;
    for (int i = 0; i < L; i++) {
        if (!nf) {
            out[i] = KV_EVKEY_NONE;
            continue;
        }
        int64_t top = fr_pop(s, fr, &nf);
        out[i] = kv_slots_key(s, s->heap[0][top]);
        if (2 * top + 1 < n) fr_push(s, fr, &nf, 2 * top + 1);
        if (2 * top + 2 < n) fr_push(s, fr, &nf, 2 * top + 2);
    }
    free(fr);
    return KV_OK;
}

void kv_slots_drop(kv_slots *s, int32_t x)
{
    int32_t last = (int32_t)--s->held;
    if (x == last) return;
    kv_slots_copy_row(s, x, last);
    if (s->nheaps == 0) return;
    s->score[x] = s->score[last];
    int32_t p = s->pos[last];
    if (p >= 0) put(s, 0, p, x);
    else put(s, 1, -1 - (int64_t)p, x);
}

/* coded rows: every bit pattern decodes, so a checksum guards them (quant.h) */
static void save_codes(const void *obj, kv_buf *out)
{
    const kv_slots *s = obj;
    kv_buf_put_arr(out, s->code, (size_t)s->held * s->store->row);
}

void kv_slots_save(const kv_slots *s, kv_buf *out)
{
    size_t n = (size_t)s->held;
    if (s->store) {
        kv_qsave_sealed(out, save_codes, s);
    } else {
        kv_buf_put_arr(out, s->K, n * (size_t)s->d * sizeof(float));
        kv_buf_put_arr(out, s->V, n * (size_t)s->dv * sizeof(float));
    }
    kv_buf_put_arr(out, s->idx, n * sizeof(int64_t));
    if (s->nheaps == 0) return;
    kv_buf_put_arr(out, s->score, n * sizeof(double));
    for (int w = 0; w < s->nheaps; w++) kv_buf_put_arr(out, s->heap[w], (size_t)s->hsize[w] * sizeof(int32_t));
}

/* The rules of kv_slots_load on a set with its arrays in place; sorted is
 * scratch for the held indices. */
static int valid(kv_slots *s, int64_t idx_end, int64_t *sorted)
{
    int64_t n = s->held;
    if (!n) return 1;
    for (int64_t i = 0; i < n; i++) {
        if (s->idx[i] < 0 || s->idx[i] >= idx_end) return 0;
        if (s->nheaps > 0 && (!isfinite(s->score[i]) || s->score[i] < 0)) return 0;
    }
    if (s->store) {
        float *tmp = malloc(sizeof(float) * (size_t)(s->d + s->dv));
        int ok = tmp != NULL;
        for (int64_t i = 0; ok && i < n; i++) ok = kv_store_row_ok(s->store, s->code + (size_t)i * s->store->row, tmp);
        free(tmp);
        if (!ok) return 0;
    } else if (!kv_all_finite(s->K, (size_t)n * (size_t)s->d) || !kv_all_finite(s->V, (size_t)n * (size_t)s->dv)) {
        return 0;
    }
    memcpy(sorted, s->idx, sizeof(int64_t) * (size_t)n);
    qsort(sorted, (size_t)n, sizeof(int64_t), kv_cmp_i64);
    for (int64_t i = 1; i < n; i++)
        if (sorted[i] == sorted[i - 1]) return 0;
    if (s->nheaps == 0) return 1;
    for (int64_t i = 0; i < n; i++) s->pos[i] = INT32_MIN; /* not placed yet */
    for (int w = 0; w < s->nheaps; w++) {
        const int32_t *a = s->heap[w];
        for (int64_t i = 0; i < s->hsize[w]; i++) {
            int32_t x = a[i];
            if (x < 0 || x >= n || s->pos[x] != INT32_MIN) return 0;
            if (i && before(s, w, x, a[(i - 1) / 2])) return 0;
            s->pos[x] = w ? (int32_t)(-1 - i) : (int32_t)i;
        }
    }
    return 1;
}

int kv_slots_load(kv_slots *out, const kv_slots *like, kv_rd *in, int64_t most, int64_t idx_end, const char *who,
                  kv_err *err)
{
    size_t cap = (size_t)(most > 0 ? most : 0), nk = 0, nv = 0, ni = 0, ns = 0, nh[2] = { 0, 0 }, n;
    void *K = NULL, *V = NULL, *idx = NULL, *score = NULL, *heap[2] = { NULL, NULL };
    int64_t *sorted = NULL;
    kv_slots t;
    kv_slots_init(&t, like->d, like->dv, like->nheaps, like->scratch_per);
    t.store = like->store;
    if (t.store) {
        kv_rd payload;
        if (kv_qload_sealed(in, &payload, err) || kv_rd_arr(&payload, &K, t.store->row, cap, &nk, err)) goto fail;
        if (payload.pos != payload.len) goto bad;
        nv = nk;
    } else if (kv_rd_arr(in, &K, sizeof(float) * (size_t)t.d, cap, &nk, err) ||
               kv_rd_arr(in, &V, sizeof(float) * (size_t)t.dv, cap, &nv, err)) {
        goto fail;
    }
    if (kv_rd_arr(in, &idx, sizeof(int64_t), cap, &ni, err)) goto fail;
    if (t.nheaps > 0 && kv_rd_arr(in, &score, sizeof(double), cap, &ns, err)) goto fail;
    for (int w = 0; w < t.nheaps; w++)
        if (kv_rd_arr(in, &heap[w], sizeof(int32_t), cap, &nh[w], err)) goto fail;
    n = nk;
    if (nv != n || ni != n || (t.nheaps > 0 && (ns != n || nh[0] + nh[1] != n))) goto bad;
    if (t.store) t.code = K;
    else { t.K = K; t.V = V; }
    t.idx = idx; t.score = score;
    K = V = idx = score = NULL;
    t.held = t.cap = t.phys = (int64_t)n;
    if (!n) {
        free(heap[0]); free(heap[1]);
        *out = t; /* nothing held: no arrays, as in an uninterrupted run */
        return KV_OK;
    }
    /* every per-slot array gets n rows: capacity = slots in use, as kv_slots_resize keeps it */
    sorted = malloc(sizeof(int64_t) * n);
    int oom = !sorted;
    if (t.nheaps > 0) {
        t.pos = malloc(sizeof(int32_t) * n);
        oom |= !t.pos;
        for (int w = 0; w < t.nheaps; w++) {
            t.heap[w] = malloc(sizeof(int32_t) * n);
            oom |= !t.heap[w];
            if (t.heap[w] && nh[w]) memcpy(t.heap[w], heap[w], sizeof(int32_t) * nh[w]);
            t.hsize[w] = (int64_t)nh[w];
        }
    }
    if (t.scratch_per) {
        t.scratch = malloc(t.scratch_per * n);
        oom |= !t.scratch;
    }
    if (oom) {
        kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring %s", who);
        goto fail;
    }
    if (!valid(&t, idx_end, sorted)) goto bad;
    free(heap[0]); free(heap[1]); free(sorted);
    *out = t;
    return KV_OK;
bad:
    kv_seterr(err, KV_EINPUT, "checkpoint: %s state is inconsistent", who);
fail:
    free(K); free(V); free(idx); free(score); free(heap[0]); free(heap[1]); free(sorted);
    kv_slots_free(&t);
    return err->code;
}

/* bytes of a held key (what a score pass reads) and of a whole row */
static double key_bytes(const kv_slots *s) { return s->store ? (double)s->store->kbytes : 4.0 * s->d; }
static double kv_bytes(const kv_slots *s) { return s->store ? (double)s->store->row : 4.0 * (s->d + s->dv); }

void kv_slots_cost(const kv_slots *s, int nq, kv_query_cost *c)
{
    double n = (double)s->held, w = s->d + s->dv;
    if (nq > 0) kv_cost_add(c, nq, n * kv_bytes(s), n, 2.0 * n * w);
}

void kv_slots_score_cost(const kv_slots *s, int nq, kv_query_cost *c)
{
    double n = (double)s->held;
    /* tokens are counted by the answer that read them: 0 here */
    if (nq > 0) kv_cost_add(c, nq, n * (key_bytes(s) + 2.0 * sizeof(double)), 0.0, 2.0 * n * s->d);
}
