/* tokring.c - see tokring.h */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "kernels/slices.h"
#include "methods/method.h"
#include "methods/common/quant.h"
#include "methods/common/tokring.h"

#define PG KV_TOKRING_PAGE
#define SLICE_PAGES 64 /* pages per slice of the parallel fold, at least */
#define MAX_SLICES 64  /* more pages make longer slices: the scratch stays small */
#define CHUNK (64 * PG) /* tokens per kernel call (whole tiles): page list on the stack, coded scratch ~L2 */

void kv_tokring_init(kv_tokring *r, int d, int dv, int64_t cap)
{
    memset(r, 0, sizeof *r);
    r->d = d;
    r->dv = dv;
    r->cap = cap;
}

void kv_tokring_use_store(kv_tokring *r, const kv_store *store)
{
    r->store = kv_store_coded(store) ? store : NULL;
}

static void page_free(kv_tokpage *p)
{
    free(p->K ? (void *)p->K : (void *)p->code);
    p->K = NULL;
    p->V = NULL;
    p->idx = NULL;
    p->code = NULL;
}

void kv_tokring_free(kv_tokring *r)
{
    for (int64_t i = 0; i < r->np; i++) page_free(&r->pages[(r->hp + i) % r->pcap]);
    free(r->pages);
    int d = r->d, dv = r->dv;
    int64_t cap = r->cap;
    const kv_store *st = r->store;
    kv_tokring_init(r, d, dv, cap);
    r->store = st;
}

/* bytes of a token's key and value as held: floats, or a store's row */
static size_t row_of(int store, int d, int dv) { return kv_store_row_bytes(store, d, dv); }

static size_t page_bytes_in(int store, int d, int dv)
{
    return PG * (row_of(store, d, dv) + sizeof(int64_t));
}

static int which(const kv_tokring *r) { return r->store ? r->store->which : 0; }

/* one page: K, V (or the rows) and idx in one allocation */
static int page_new(kv_tokpage *p, const kv_tokring *r)
{
    size_t rows = (size_t)PG * row_of(which(r), r->d, r->dv);
    char *m = malloc(page_bytes_in(which(r), r->d, r->dv));
    if (!m) return -1;
    p->K = p->V = NULL;
    p->code = NULL;
    if (r->store) {
        p->code = (uint8_t *)m;
    } else {
        p->K = (float *)m;
        p->V = p->K + (size_t)PG * r->d;
    }
    p->idx = (int64_t *)(m + rows);
    return 0;
}

/* append a token: its floats k, v, or with a store its row */
static int push_raw(kv_tokring *r, const float *k, const float *v, const uint8_t *row, int64_t g, kv_err *err)
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
        if (page_new(&r->pages[(r->hp + r->np) % r->pcap], r))
            return kv_seterr(err, KV_EINTERNAL, "window: out of memory holding %lld tokens", (long long)r->count);
        r->np++;
    }
    int64_t sl;
    kv_tokpage *p = (kv_tokpage *)kv_tokring_page_(r, r->count, &sl);
    if (r->store) {
        memcpy(p->code + sl * r->store->row, row, r->store->row);
    } else {
        memcpy(p->K + sl * r->d, k, sizeof(float) * (size_t)r->d);
        memcpy(p->V + sl * r->dv, v, sizeof(float) * (size_t)r->dv);
    }
    p->idx[sl] = g;
    r->count++;
    return KV_OK;
}

int kv_tokring_push(kv_tokring *r, const float *k, const float *v, int64_t g, kv_err *err)
{
    if (!r->store) return push_raw(r, k, v, NULL, g, err);
    uint8_t row[r->store->row]; /* encoded before any room is made: a refusal changes nothing */
    if (kv_store_encode((kv_store *)r->store, k, v, row)) return kv_store_refused(r->store, "window", err);
    return push_raw(r, k, v, row, g, err);
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

/* tokens [a, e) of a float ring (e - a <= CHUNK) as one page list */
static int fold_pages(const kv_tokring *r, int64_t a, int64_t e, const float *Q, int nq, float scale, double *st)
{
    const float *K[CHUNK / PG + 1], *V[CHUNK / PG + 1];
    size_t n[CHUNK / PG + 1], np = 0;
    while (a < e) {
        int64_t sl;
        const kv_tokpage *p = kv_tokring_page_(r, a, &sl);
        n[np] = (size_t)(PG - sl < e - a ? PG - sl : e - a);
        K[np] = p->K + sl * r->d;
        V[np] = p->V + sl * r->dv;
        a += (int64_t)n[np++];
    }
    return kv_attn_fold_pages(Q, nq, K, V, n, np, r->d, r->dv, scale, st);
}

/* tokens [a, e) of a coded ring (e - a <= CHUNK) decoded into buf
 * (CHUNK rows of keys then values) and folded as one block: the same
 * tiles as fold_pages, so a store that decodes to the same floats gives
 * the same bits */
static int fold_coded(const kv_tokring *r, int64_t a, int64_t e, float *buf, const float *Q, int nq, float scale,
                      double *st)
{
    float *K = buf, *V = buf + (size_t)CHUNK * r->d;
    size_t m = 0;
    while (a < e) {
        int64_t sl;
        const kv_tokpage *p = kv_tokring_page_(r, a, &sl);
        size_t n = (size_t)(PG - sl < e - a ? PG - sl : e - a);
        const uint8_t *rows = p->code + sl * r->store->row;
        kv_store_keys(r->store, rows, n, K + m * r->d);
        kv_store_vals(r->store, rows, n, V + m * r->dv);
        m += n;
        a += (int64_t)n;
    }
    return kv_attn_fold(Q, nq, K, V, m, r->d, r->dv, scale, st);
}

/* tokens [a, b) of the ring (a, b token positions) folded serially, in
 * chunks of CHUNK tokens from a */
static int fold_range(const kv_tokring *r, int64_t a, int64_t b, const float *Q, int nq, float scale, double *st)
{
    float *buf = NULL; /* coded: one chunk's decoded rows */
    if (r->store && a < b && !(buf = malloc(sizeof(float) * CHUNK * (size_t)(r->d + r->dv)))) return KV_EINTERNAL;
    int rc = KV_OK;
    for (; !rc && a < b; a += CHUNK) {
        int64_t e = b - a < CHUNK ? b : a + CHUNK;
        rc = r->store ? fold_coded(r, a, e, buf, Q, nq, scale, st) : fold_pages(r, a, e, Q, nq, scale, st);
    }
    free(buf);
    return rc;
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
    return (size_t)r->np * page_bytes_in(which(r), r->d, r->dv) + (size_t)r->pcap * sizeof(kv_tokpage);
}

int64_t kv_tokring_max_bytes_in(int store, int d, int dv, int64_t n)
{
    int64_t pages = (n + PG - 1) / PG + 1, slots = 4;
    while (slots < pages) slots *= 2;
    return pages * (int64_t)page_bytes_in(store, d, dv) + slots * (int64_t)sizeof(kv_tokpage);
}

int64_t kv_tokring_max_bytes(int d, int dv, int64_t n) { return kv_tokring_max_bytes_in(0, d, dv, n); }

int64_t kv_tokring_token_bytes_in(int store, int d, int dv) { return (int64_t)page_bytes_in(store, d, dv) / PG; }

int64_t kv_tokring_token_bytes(int d, int dv) { return kv_tokring_token_bytes_in(0, d, dv); }

/* A rank holding window tokens may have a part-used first and last page;
 * with shard chunks >= W/2 (the default chunk is 4096, W's default 1024)
 * at most two ranks hold window tokens at a time, so two pages each are
 * reserved for min(P, 2) ranks, one more for the window's ends, and a
 * table of 8 slots per rank.  Smaller chunks can spread a window over more
 * ranks and go over by up to two pages per extra rank: reserving those for
 * all P ranks would make W, and so the answer, shrink with P. */
static int64_t fit_reserve(int store, int d, int dv, int P)
{
    if (P < 1) P = 1;
    int64_t holders = P < 2 ? P : 2;
    return (2 * holders + 1) * KV_TOKRING_PAGE * kv_tokring_token_bytes_in(store, d, dv) +
           8 * (int64_t)P * (int64_t)sizeof(kv_tokpage);
}

int64_t kv_tokring_fit_in(int64_t bytes, int store, int d, int dv, int P)
{
    int64_t per = kv_tokring_token_bytes_in(store, d, dv) +
                  (2 * (int64_t)sizeof(kv_tokpage) + KV_TOKRING_PAGE - 1) / KV_TOKRING_PAGE;
    int64_t rest = bytes - fit_reserve(store, d, dv, P);
    return rest > 0 ? rest / per : 0;
}

int64_t kv_tokring_fit(int64_t bytes, int d, int dv, int P) { return kv_tokring_fit_in(bytes, 0, d, dv, P); }

int64_t kv_tokring_fit_min_in(int store, int d, int dv, int P)
{
    return fit_reserve(store, d, dv, P) + kv_tokring_token_bytes_in(store, d, dv) + 2 * (int64_t)sizeof(kv_tokpage);
}

int64_t kv_tokring_fit_min(int d, int dv, int P) { return kv_tokring_fit_min_in(0, d, dv, P); }

static const char *what(const kv_rd *in) { return in->what ? in->what : "a"; }

/* token by token (key, value, index, or row and index), so that load
 * rebuilds the ring straight from the reader, without staging the tokens */
static void save_body(const void *obj, kv_buf *out)
{
    const kv_tokring *r = obj;
    kv_buf_put_i64(out, r->off);
    kv_buf_put_i64(out, r->count);
    kv_buf_put_i64(out, r->pcap); /* bytes() counts the page table */
    for (int64_t i = 0; i < r->count; i++) {
        int64_t sl;
        const kv_tokpage *p = kv_tokring_page_(r, i, &sl);
        if (r->store) {
            kv_buf_put(out, p->code + sl * r->store->row, r->store->row);
        } else {
            kv_buf_put(out, p->K + sl * r->d, sizeof(float) * (size_t)r->d);
            kv_buf_put(out, p->V + sl * r->dv, sizeof(float) * (size_t)r->dv);
        }
        kv_buf_put_i64(out, p->idx[sl]);
    }
}

void kv_tokring_save(const kv_tokring *r, kv_buf *out)
{
    /* coded rows: every bit pattern decodes, so a checksum guards them (quant.h) */
    if (r->store) kv_qsave_sealed(out, save_body, r);
    else save_body(r, out);
}

static int load_body(kv_tokring *r, kv_rd *in, int64_t max_tokens, int64_t n_total, kv_err *err);

int kv_tokring_load(kv_tokring *r, kv_rd *in, int64_t max_tokens, int64_t n_total, kv_err *err)
{
    if (!r->store) return load_body(r, in, max_tokens, n_total, err);
    kv_rd payload;
    if (kv_qload_sealed(in, &payload, err) || load_body(r, &payload, max_tokens, n_total, err)) return err->code;
    if (payload.pos != payload.len) {
        kv_tokring_free(r);
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has bytes after its token ring", what(in));
    }
    return KV_OK;
}

static int load_body(kv_tokring *r, kv_rd *in, int64_t max_tokens, int64_t n_total, kv_err *err)
{
    int64_t off, count, pcap;
    if (kv_rd_i64(in, &off, err) || kv_rd_i64(in, &count, err) || kv_rd_i64(in, &pcap, err)) return err->code;
    size_t fl = sizeof(float) * (size_t)(r->d + r->dv), held = r->store ? r->store->row : fl;
    size_t rowbytes = held + sizeof(int64_t);
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
    float *row = malloc(fl + held); /* one token at a time: floats (decoded), and its row */
    uint8_t *code = (uint8_t *)row + fl;
    if (!row) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring %lld tokens", (long long)count);
    int rc = KV_OK;
    kv_tokring t;
    kv_tokring_init(&t, r->d, r->dv, r->cap);
    t.store = r->store;
    if (count) {
        /* the first page starts `off` slots in, as it did when saved */
        t.off = off;
        t.count = 0;
        t.pcap = pcap;
        t.pages = calloc((size_t)t.pcap, sizeof *t.pages);
        if (!t.pages || page_new(&t.pages[0], &t))
            rc = kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring %lld tokens", (long long)count);
        else t.np = 1;
    }
    int64_t prev = -1;
    for (int64_t i = 0; !rc && i < count; i++) {
        int64_t g;
        rc = kv_rd_get(in, r->store ? (void *)code : (void *)row, held, err) || kv_rd_i64(in, &g, err);
        if (!rc && (g < 0 || g >= n_total || g <= prev))
            rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad token index", what(in));
        /* traces hold finite numbers only (io/trace.c checks) */
        if (!rc && (r->store ? !kv_store_row_ok(r->store, code, row) : !kv_all_finite(row, d + dv)))
            rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a non-finite key or value", what(in));
        if (!rc) rc = push_raw(&t, row, row + d, code, g, err);
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
    double row = r->store ? (double)r->store->row : 4.0 * w;
    if (nq > 0) kv_cost_add(c, nq, row * n, n, 2.0 * n * w);
}
