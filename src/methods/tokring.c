/* tokring.c - see tokring.h */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "kernels/slices.h"
#include "methods/method.h"
#include "methods/tokring.h"

#define PG KV_TOKRING_PAGE
#define SLICE_PAGES 16 /* pages per slice of the parallel fold, at least */
#define MAX_SLICES 64  /* more pages make longer slices: the scratch stays small */

void kv_tokring_init(kv_tokring *r, int d, int dv, int64_t cap)
{
    memset(r, 0, sizeof *r);
    r->d = d;
    r->dv = dv;
    r->cap = cap;
}

static void page_free(kv_tokpage *p)
{
    free(p->K);
    p->K = NULL;
    p->V = NULL;
    p->idx = NULL;
}

void kv_tokring_free(kv_tokring *r)
{
    for (int64_t i = 0; i < r->np; i++) page_free(&r->pages[(r->hp + i) % r->pcap]);
    free(r->pages);
    int d = r->d, dv = r->dv;
    int64_t cap = r->cap;
    kv_tokring_init(r, d, dv, cap);
}

static size_t page_bytes(int d, int dv)
{
    return PG * ((size_t)(d + dv) * sizeof(float) + sizeof(int64_t));
}

/* one page: K, V and idx in one allocation */
static int page_new(kv_tokpage *p, int d, int dv)
{
    char *m = malloc(page_bytes(d, dv));
    if (!m) return -1;
    p->K = (float *)m;
    p->V = p->K + (size_t)PG * d;
    p->idx = (int64_t *)(m + (size_t)PG * (size_t)(d + dv) * sizeof(float));
    return 0;
}

int kv_tokring_push(kv_tokring *r, const float *k, const float *v, int64_t g, kv_err *err)
{
    if (r->count == r->cap) return kv_seterr(err, KV_EINTERNAL, "tokring: push into a full ring");
    int64_t j = r->off + r->count;
    if (j == r->np * PG) { /* a new page at the tail */
        if (r->np == r->pcap) {
            int64_t nc = r->pcap ? 2 * r->pcap : 4;
            kv_tokpage *np = calloc((size_t)nc, sizeof *np);
            if (!np) return kv_seterr(err, KV_EINTERNAL, "window: out of memory holding %lld tokens", (long long)r->count);
            for (int64_t i = 0; i < r->np; i++) np[i] = r->pages[(r->hp + i) % r->pcap];
            free(r->pages);
            r->pages = np;
            r->pcap = nc;
            r->hp = 0;
        }
        if (page_new(&r->pages[(r->hp + r->np) % r->pcap], r->d, r->dv))
            return kv_seterr(err, KV_EINTERNAL, "window: out of memory holding %lld tokens", (long long)r->count);
        r->np++;
    }
    int64_t sl;
    kv_tokpage *p = (kv_tokpage *)kv_tokring_page_(r, r->count, &sl);
    memcpy(p->K + sl * r->d, k, sizeof(float) * (size_t)r->d);
    memcpy(p->V + sl * r->dv, v, sizeof(float) * (size_t)r->dv);
    p->idx[sl] = g;
    r->count++;
    return KV_OK;
}

void kv_tokring_pop(kv_tokring *r)
{
    if (!r->count) return;
    r->count--;
    r->off++;
    if (r->off == PG || r->count == 0) { /* the first page is done with */
        page_free(&r->pages[r->hp]);
        r->hp = r->hp + 1 == r->pcap ? 0 : r->hp + 1;
        r->np--;
        r->off = 0;
        if (r->count == 0 && r->np) { /* an empty ring keeps no page */
            page_free(&r->pages[r->hp]);
            r->np = 0;
        }
    }
}

int64_t kv_tokring_lower(const kv_tokring *r, int64_t g)
{
    int64_t lo = 0, hi = r->count;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (kv_tokring_idx(r, mid) < g) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

void kv_tokring_drop_below(kv_tokring *r, int64_t g)
{
    while (r->count && kv_tokring_idx(r, 0) < g) kv_tokring_pop(r);
}

/* tokens [a, b) of the ring (a, b token positions) folded serially, page by page */
static int fold_range(const kv_tokring *r, int64_t a, int64_t b, const float *Q, int nq, float scale, double *st)
{
    while (a < b) {
        int64_t sl;
        const kv_tokpage *p = kv_tokring_page_(r, a, &sl);
        int64_t n = PG - sl < b - a ? PG - sl : b - a;
        int rc = kv_attn_fold(Q, nq, p->K + sl * r->d, p->V + sl * r->dv, (size_t)n, r->d, r->dv, scale, st);
        if (rc) return rc;
        a += n;
    }
    return KV_OK;
}

typedef struct { const kv_tokring *r; int64_t from, s0, SP; } fold_arg;

/* slice i: ring positions [(s0 + i) SP - off, + SP) clipped to [from, count): page-aligned */
static int fold_slice(const void *arg, int64_t i, const float *Q, int nq, float scale, double *st)
{
    const fold_arg *a = arg;
    int64_t lo = (a->s0 + i) * a->SP - a->r->off, hi = lo + a->SP;
    if (lo < a->from) lo = a->from;
    if (hi > a->r->count) hi = a->r->count;
    return fold_range(a->r, lo, hi, Q, nq, scale, st);
}

int kv_tokring_fold(const kv_tokring *r, int64_t from, const float *Q, int nq, float scale, double *st)
{
    if (from >= r->count || nq <= 0) return KV_OK;
    int64_t pps = (r->np + MAX_SLICES - 1) / MAX_SLICES;
    fold_arg a = { r, from, 0, (pps > SLICE_PAGES ? pps : SLICE_PAGES) * PG };
    a.s0 = (r->off + from) / a.SP;
    int64_t s1 = (r->off + r->count - 1) / a.SP;
    return kv_fold_slices(s1 - a.s0 + 1, fold_slice, &a, Q, nq, r->dv, scale, st);
}

size_t kv_tokring_bytes(const kv_tokring *r)
{
    return (size_t)r->np * page_bytes(r->d, r->dv) + (size_t)r->pcap * sizeof(kv_tokpage);
}

int64_t kv_tokring_max_bytes(int d, int dv, int64_t n)
{
    int64_t pages = (n + PG - 1) / PG + 1, slots = 4;
    while (slots < pages) slots *= 2;
    return pages * (int64_t)page_bytes(d, dv) + slots * (int64_t)sizeof(kv_tokpage);
}

int64_t kv_tokring_token_bytes(int d, int dv) { return (int64_t)page_bytes(d, dv) / PG; }

/* A rank holding window tokens may have a part-used first and last page;
 * with shard chunks >= W/2 (the default chunk is 4096, W's default 1024)
 * at most two ranks hold window tokens at a time, so two pages each are
 * reserved for min(P, 2) ranks, one more for the window's ends, and a
 * table of 8 slots per rank.  Smaller chunks can spread a window over more
 * ranks and go over by up to two pages per extra rank: reserving those for
 * all P ranks would make W, and so the answer, shrink with P. */
static int64_t fit_reserve(int d, int dv, int P)
{
    if (P < 1) P = 1;
    int64_t holders = P < 2 ? P : 2;
    return (2 * holders + 1) * KV_TOKRING_PAGE * kv_tokring_token_bytes(d, dv) + 8 * (int64_t)P * (int64_t)sizeof(kv_tokpage);
}

int64_t kv_tokring_fit(int64_t bytes, int d, int dv, int P)
{
    int64_t per = kv_tokring_token_bytes(d, dv) + (2 * (int64_t)sizeof(kv_tokpage) + KV_TOKRING_PAGE - 1) / KV_TOKRING_PAGE;
    int64_t rest = bytes - fit_reserve(d, dv, P);
    return rest > 0 ? rest / per : 0;
}

int64_t kv_tokring_fit_min(int d, int dv, int P)
{
    return fit_reserve(d, dv, P) + kv_tokring_token_bytes(d, dv) + 2 * (int64_t)sizeof(kv_tokpage);
}

static const char *what(const kv_rd *in) { return in->what ? in->what : "a"; }

/* token by token (key, value, index), so that load rebuilds the ring
 * straight from the reader, without staging the tokens */
void kv_tokring_save(const kv_tokring *r, kv_buf *out)
{
    kv_buf_put_i64(out, r->off);
    kv_buf_put_i64(out, r->count);
    kv_buf_put_i64(out, r->pcap); /* bytes() counts the page table */
    for (int64_t i = 0; i < r->count; i++) {
        kv_buf_put(out, kv_tokring_k(r, i), sizeof(float) * (size_t)r->d);
        kv_buf_put(out, kv_tokring_v(r, i), sizeof(float) * (size_t)r->dv);
        kv_buf_put_i64(out, kv_tokring_idx(r, i));
    }
}

int kv_tokring_load(kv_tokring *r, kv_rd *in, int64_t max_tokens, int64_t n_total, kv_err *err)
{
    int64_t off, count, pcap;
    if (kv_rd_i64(in, &off, err) || kv_rd_i64(in, &count, err) || kv_rd_i64(in, &pcap, err)) return err->code;
    size_t rowbytes = sizeof(float) * (size_t)(r->d + r->dv) + sizeof(int64_t);
    if (off < 0 || off >= PG || count < 0 || count > r->cap || count > max_tokens)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad token ring header", what(in));
    /* the table doubles from 4 slots when full: a power of two, at most the
     * smallest one above the pages the most tokens can need (max_bytes' bound) */
    int64_t most = max_tokens < r->cap ? max_tokens : r->cap, need = count ? (off + count + PG - 1) / PG : 0, top = 4;
    while (top < (most + PG - 1) / PG + 1) top *= 2;
    int bad_table = pcap != 0 && (pcap < 4 || (pcap & (pcap - 1)) || pcap > top);
    if (bad_table || pcap < need || (count == 0 && off != 0) ||
        (uint64_t)count > (in->len - in->pos) / rowbytes)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad token ring header", what(in));
    size_t d = (size_t)r->d, dv = (size_t)r->dv;
    float *row = malloc(sizeof(float) * (d + dv)); /* one token at a time */
    if (!row) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring %lld tokens", (long long)count);
    int rc = KV_OK;
    kv_tokring t;
    kv_tokring_init(&t, r->d, r->dv, r->cap);
    if (count) {
        /* the first page starts `off` slots in, as it did when saved */
        t.off = off;
        t.count = 0;
        t.pcap = pcap;
        t.pages = calloc((size_t)t.pcap, sizeof *t.pages);
        if (!t.pages || page_new(&t.pages[0], r->d, r->dv))
            rc = kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring %lld tokens", (long long)count);
        else t.np = 1;
    }
    int64_t prev = -1;
    for (int64_t i = 0; !rc && i < count; i++) {
        int64_t g;
        rc = kv_rd_get(in, row, sizeof(float) * (d + dv), err) || kv_rd_i64(in, &g, err);
        if (!rc && (g < 0 || g >= n_total || g <= prev))
            rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad token index", what(in));
        /* traces hold finite numbers only (io/trace.c checks) */
        if (!rc && !kv_all_finite(row, d + dv))
            rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a non-finite key or value", what(in));
        if (!rc) rc = kv_tokring_push(&t, row, row + d, g, err);
        prev = g;
    }
    free(row);
    if (rc) {
        kv_tokring_free(&t);
        return err->code;
    }
    if (!count && pcap) { /* an emptied ring keeps its table */
        t.pages = calloc((size_t)pcap, sizeof *t.pages);
        if (!t.pages) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring a token ring");
        t.pcap = pcap;
    }
    kv_tokring_free(r);
    *r = t;
    return KV_OK;
}

void kv_tokring_cost(const kv_tokring *r, int64_t from, int nq, kv_query_cost *c)
{
    double n = from < r->count ? (double)(r->count - from) : 0.0, w = r->d + r->dv;
    if (nq > 0) kv_cost_add(c, nq, 4.0 * n * w, n, 2.0 * n * w);
}
