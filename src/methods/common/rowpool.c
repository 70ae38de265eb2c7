/* rowpool.c - see rowpool.h */
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "kernels/slices.h"
#include "methods/method.h"
#include "methods/common/rowpool.h"

#define PG KV_ROWPOOL_PAGE
#define SLICE_PAGES 64 /* pages per slice of the parallel fold, at least */
#define MAX_SLICES 64  /* more pages make longer slices: the scratch stays small */
#define CHUNK 64       /* pages per kernel call: the page list on the stack */

void kv_rowpool_init(kv_rowpool *r, int d, int dv)
{
    memset(r, 0, sizeof *r);
    r->d = d;
    r->dv = dv;
}

void kv_rowpool_free(kv_rowpool *r)
{
    for (int64_t i = 0; i < r->np; i++) free(r->pages[i].K);
    free(r->pages);
    kv_rowpool_init(r, r->d, r->dv);
}

static size_t page_bytes(int d, int dv)
{
    return PG * ((size_t)(d + dv) * sizeof(float) + sizeof(uint64_t) + sizeof(int64_t));
}

int kv_rowpool_add(kv_rowpool *r, const float *k, const float *v, uint64_t tag, int64_t g, kv_err *err)
{
    if (r->count == r->np * PG) {
        if (r->np == r->pcap) {
            int64_t nc = r->pcap ? 2 * r->pcap : 4;
            kv_rowpage *np = realloc(r->pages, sizeof *np * (size_t)nc);
            if (!np) return kv_seterr(err, KV_EINTERNAL, "out of memory holding %lld tokens", (long long)r->count);
            r->pages = np;
            r->pcap = nc;
        }
        char *m = malloc(page_bytes(r->d, r->dv));
        if (!m) return kv_seterr(err, KV_EINTERNAL, "out of memory holding %lld tokens", (long long)r->count);
        kv_rowpage *p = &r->pages[r->np++];
        p->K = (float *)m;
        p->V = p->K + (size_t)PG * r->d;
        p->tag = (uint64_t *)(m + (size_t)PG * (size_t)(r->d + r->dv) * sizeof(float));
        p->idx = (int64_t *)(p->tag + PG);
    }
    kv_rowpage *p = kv_rowpool_page_(r, r->count);
    int64_t s = r->count % PG;
    memcpy(p->K + s * r->d, k, sizeof(float) * (size_t)r->d);
    memcpy(p->V + s * r->dv, v, sizeof(float) * (size_t)r->dv);
    p->tag[s] = tag;
    p->idx[s] = g;
    r->count++;
    return KV_OK;
}

void kv_rowpool_remove(kv_rowpool *r, int64_t i)
{
    int64_t last = r->count - 1;
    if (i < 0 || i > last) return;
    if (i != last) {
        kv_rowpage *a = kv_rowpool_page_(r, i), *b = kv_rowpool_page_(r, last);
        int64_t si = i % PG, sl = last % PG;
        memcpy(a->K + si * r->d, b->K + sl * r->d, sizeof(float) * (size_t)r->d);
        memcpy(a->V + si * r->dv, b->V + sl * r->dv, sizeof(float) * (size_t)r->dv);
        a->tag[si] = b->tag[sl];
        a->idx[si] = b->idx[sl];
    }
    r->count--;
    if (r->count <= (r->np - 1) * PG) free(r->pages[--r->np].K); /* the last page is empty */
}

/* pages [p0, p1), CHUNK pages at a time as one page list (one running
 * state, tiles across pages; the list on the stack) */
static int fold_pages(const kv_rowpool *r, int64_t p0, int64_t p1, const float *Q, int nq, float scale, double *st)
{
    int rc = KV_OK;
    for (; !rc && p0 < p1; p0 += CHUNK) {
        const float *K[CHUNK], *V[CHUNK];
        size_t n[CHUNK], np = 0;
        for (int64_t p = p0; p < p1 && p < p0 + CHUNK; p++, np++) {
            n[np] = (size_t)(r->count - p * PG < PG ? r->count - p * PG : PG);
            K[np] = r->pages[p].K;
            V[np] = r->pages[p].V;
        }
        rc = kv_attn_fold_pages(Q, nq, K, V, n, np, r->d, r->dv, scale, st);
    }
    return rc;
}

static int64_t slice_pages(const kv_rowpool *r)
{
    int64_t pps = (r->np + MAX_SLICES - 1) / MAX_SLICES;
    return pps > SLICE_PAGES ? pps : SLICE_PAGES;
}

static int fold_slice(const void *arg, int64_t i, const float *Q, int nq, float scale, double *st)
{
    const kv_rowpool *r = arg;
    int64_t pps = slice_pages(r), b = (i + 1) * pps < r->np ? (i + 1) * pps : r->np;
    return fold_pages(r, i * pps, b, Q, nq, scale, st);
}

int kv_rowpool_fold(const kv_rowpool *r, const float *Q, int nq, float scale, double *st)
{
    if (!r->count || nq <= 0) return KV_OK;
    int64_t pps = slice_pages(r);
    return kv_fold_slices((r->np + pps - 1) / pps, fold_slice, r, Q, nq, r->dv, scale, st);
}

size_t kv_rowpool_bytes(const kv_rowpool *r)
{
    return (size_t)r->np * page_bytes(r->d, r->dv) + (size_t)r->pcap * sizeof(kv_rowpage);
}

int64_t kv_rowpool_max_bytes(int d, int dv, int64_t n)
{
    int64_t pages = (n + PG - 1) / PG, slots = 4;
    while (slots < pages) slots *= 2;
    return pages * (int64_t)page_bytes(d, dv) + slots * (int64_t)sizeof(kv_rowpage);
}

int64_t kv_rowpool_row_bytes(int d, int dv) { return (int64_t)page_bytes(d, dv) / PG; }

/* row by row (key, value, tag, index), so that load rebuilds the pool
 * straight from the reader, without staging the rows */
void kv_rowpool_save(const kv_rowpool *r, kv_buf *out)
{
    kv_buf_put_i64(out, r->count);
    kv_buf_put_i64(out, r->pcap); /* bytes() counts the page table */
    for (int64_t i = 0; i < r->count; i++) {
        kv_buf_put(out, kv_rowpool_k(r, i), sizeof(float) * (size_t)r->d);
        kv_buf_put(out, kv_rowpool_v(r, i), sizeof(float) * (size_t)r->dv);
        kv_buf_put_i64(out, (int64_t)kv_rowpool_tag(r, i));
        kv_buf_put_i64(out, kv_rowpool_idx(r, i));
    }
}

int kv_rowpool_load(kv_rowpool *r, kv_rd *in, int64_t max_rows, int64_t n_total, kv_err *err)
{
    int64_t count, pcap;
    const char *w = in->what ? in->what : "a";
    if (kv_rd_i64(in, &count, err) || kv_rd_i64(in, &pcap, err)) return err->code;
    size_t d = (size_t)r->d, dv = (size_t)r->dv, rowbytes = sizeof(float) * (d + dv) + 16;
    if (count < 0 || count > max_rows || (uint64_t)count > (in->len - in->pos) / rowbytes)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad sample count", w);
    /* the table doubles from 4 slots: a power of two, at most what max_rows rows can need */
    int64_t most = 4;
    while (most < (max_rows + PG - 1) / PG) most *= 2;
    if (pcap != 0 && (pcap < 4 || (pcap & (pcap - 1)) || pcap > most || pcap < (count + PG - 1) / PG))
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad page table", w);
    if (pcap == 0 && count)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad page table", w);
    kv_rowpool t;
    kv_rowpool_init(&t, r->d, r->dv);
    float *row = malloc(sizeof(float) * (d + dv)); /* one row at a time */
    int rc = !row ? kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring %lld tokens", (long long)count)
                  : KV_OK;
    if (!rc && pcap) { /* the table as it was: its size is counted */
        t.pages = calloc((size_t)pcap, sizeof *t.pages);
        if (!t.pages) rc = kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring %lld tokens", (long long)count);
        else t.pcap = pcap;
    }
    for (int64_t i = 0; !rc && i < count; i++) {
        int64_t tag, g;
        rc = kv_rd_get(in, row, sizeof(float) * (d + dv), err) || kv_rd_i64(in, &tag, err) || kv_rd_i64(in, &g, err);
        if (!rc && (g < 0 || g >= n_total))
            rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad token index", w);
        if (!rc && !kv_all_finite(row, d + dv))
            rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a non-finite key or value", w);
        if (!rc) rc = kv_rowpool_add(&t, row, row + d, (uint64_t)tag, g, err);
    }
    free(row);
    if (rc) {
        kv_rowpool_free(&t);
        kv_rowpool_free(r);
        return err->code;
    }
    kv_rowpool_free(r);
    *r = t;
    return KV_OK;
}
