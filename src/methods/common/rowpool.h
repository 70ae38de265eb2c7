/* rowpool.h - a dense set of held tokens in 16-token pages, for samplers
 * whose held set changes anywhere (uniform's bottom-k sample).
 *
 * Rows 0..count-1 are dense: removing row i moves the last row into it, so
 * the pool never has holes and frees its last page as soon as it is empty.
 * bytes() counts every allocated page, so memory follows the held count
 * (at most one part-filled page) instead of the most ever held. */
#ifndef KVSTREAM_ROWPOOL_H
#define KVSTREAM_ROWPOOL_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"
#include "core/kverr.h"

#define KV_ROWPOOL_PAGE 16

typedef struct {
    float *K, *V;   /* PAGE x d, PAGE x dv */
    uint64_t *tag;  /* per row: the caller's key (e.g. a priority) */
    int64_t *idx;   /* per row: global index */
} kv_rowpage;

typedef struct {
    int d, dv;
    int64_t count, np, pcap;
    kv_rowpage *pages;
} kv_rowpool;

void kv_rowpool_init(kv_rowpool *r, int d, int dv);
void kv_rowpool_free(kv_rowpool *r);

/* Append a row; KV_EINTERNAL when a page cannot be allocated. */
int kv_rowpool_add(kv_rowpool *r, const float *k, const float *v, uint64_t tag, int64_t g, kv_err *err);

/* Remove row i (the last row moves into it). */
void kv_rowpool_remove(kv_rowpool *r, int64_t i);

static inline kv_rowpage *kv_rowpool_page_(const kv_rowpool *r, int64_t i) { return &r->pages[i / KV_ROWPOOL_PAGE]; }
static inline uint64_t kv_rowpool_tag(const kv_rowpool *r, int64_t i)
{
    return kv_rowpool_page_(r, i)->tag[i % KV_ROWPOOL_PAGE];
}
static inline int64_t kv_rowpool_idx(const kv_rowpool *r, int64_t i)
{
    return kv_rowpool_page_(r, i)->idx[i % KV_ROWPOOL_PAGE];
}
static inline const float *kv_rowpool_k(const kv_rowpool *r, int64_t i)
{
    return kv_rowpool_page_(r, i)->K + (i % KV_ROWPOOL_PAGE) * r->d;
}
static inline const float *kv_rowpool_v(const kv_rowpool *r, int64_t i)
{
    return kv_rowpool_page_(r, i)->V + (i % KV_ROWPOOL_PAGE) * r->dv;
}

/* Fold every row into nq states with the exact kernel, in fixed slices of
 * pages merged in order (thread-count independent). */
int kv_rowpool_fold(const kv_rowpool *r, const float *Q, int nq, float scale, double *st);

/* Allocated pages and the page table. */
size_t kv_rowpool_bytes(const kv_rowpool *r);

/* Most bytes a pool of at most n rows can have allocated. */
int64_t kv_rowpool_max_bytes(int d, int dv, int64_t n);

/* Bytes per row of a full page. */
int64_t kv_rowpool_row_bytes(int d, int dv);

/* Checkpoint: count, then keys, values, tags and indices in row order
 * (the order decides the fold's rounding). */
void kv_rowpool_save(const kv_rowpool *r, kv_buf *out);

/* Restore into an empty pool; rejects more than max_rows rows, indices
 * outside [0, n_total) and non-finite keys or values.  On failure the pool
 * is left empty. */
int kv_rowpool_load(kv_rowpool *r, kv_rd *in, int64_t max_rows, int64_t n_total, kv_err *err);

#endif
