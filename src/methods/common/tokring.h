/* tokring.h - a FIFO of tokens (key, value, global index) for the window
 * methods (window, sinks, unmasked-window, window+subgen).
 *
 * Tokens are pushed in stream order, so the ring is sorted by global index
 * and "the tokens with index >= g" are a suffix of it.  Storage is pages of
 * KV_TOKRING_PAGE tokens, allocated when a push needs one and freed as soon
 * as its last token is popped: what the ring holds in memory follows what
 * it holds in tokens (at most two partly used pages), so a rank whose
 * tokens have all left the window holds nothing, and bytes() counts every
 * allocated page, not just the used rows. */
#ifndef KVSTREAM_TOKRING_H
#define KVSTREAM_TOKRING_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"
#include "core/kverr.h"
#include "methods/method.h"
#include "methods/common/store.h"

#define KV_TOKRING_PAGE 16

typedef struct {
    float *K, *V;   /* PAGE x d, PAGE x dv (NULL with a coded store) */
    int64_t *idx;   /* PAGE global indices */
    uint8_t *code;  /* coded store: PAGE rows of store->row bytes */
} kv_tokpage;

typedef struct {
    int d, dv;
    int64_t cap;       /* most tokens ever held */
    int64_t count;     /* tokens held */
    int64_t off;       /* slot of the oldest token in the first page */
    int64_t hp, np;    /* first page's slot in pages[], pages in use */
    int64_t pcap;      /* slots of pages[] */
    kv_tokpage *pages; /* ring of pages */
    const kv_store *store; /* NULL or f32: float pages; else coded rows (window, sinks: store=) */
} kv_tokring;

void kv_tokring_init(kv_tokring *r, int d, int dv, int64_t cap);

/* Hold rows in store (store.h) from now on: an empty ring; the store
 * outlives it.  kv_tokring_k/v are then not valid (no floats are held):
 * kv_tokring_fold decodes a page at a time, in the store's domain (tq:
 * the caller takes the value sums back with kv_store_finish after its
 * last fold).  kv_tokring_push returns KV_EINPUT when the store refuses a
 * number. */
void kv_tokring_use_store(kv_tokring *r, const kv_store *store);

/* Bytes per token of a full page with rows of store choice `store`
 * (store.h; 0: floats): what the _in budget rules below divide by. */
int64_t kv_tokring_token_bytes_in(int store, int d, int dv);
int64_t kv_tokring_fit_in(int64_t bytes, int store, int d, int dv, int P);
int64_t kv_tokring_fit_min_in(int store, int d, int dv, int P);
int64_t kv_tokring_max_bytes_in(int store, int d, int dv, int64_t n);
void kv_tokring_free(kv_tokring *r);

/* Append a token; the caller pops first if the ring is full (KV_EINTERNAL
 * otherwise, a bug); KV_EINTERNAL when a page cannot be allocated. */
int kv_tokring_push(kv_tokring *r, const float *k, const float *v, int64_t g, kv_err *err);

/* Drop the oldest token. */
void kv_tokring_pop(kv_tokring *r);

/* i-th oldest token (0 <= i < count): page and slot. */
static inline const kv_tokpage *kv_tokring_page_(const kv_tokring *r, int64_t i, int64_t *slot)
{
    int64_t j = r->off + i, p = r->hp + j / KV_TOKRING_PAGE;
    *slot = j % KV_TOKRING_PAGE;
    return &r->pages[p >= r->pcap ? p - r->pcap : p];
}
static inline int64_t kv_tokring_idx(const kv_tokring *r, int64_t i)
{
    int64_t sl;
    return kv_tokring_page_(r, i, &sl)->idx[sl];
}
static inline const float *kv_tokring_k(const kv_tokring *r, int64_t i)
{
    int64_t sl;
    return kv_tokring_page_(r, i, &sl)->K + sl * r->d;
}
static inline const float *kv_tokring_v(const kv_tokring *r, int64_t i)
{
    int64_t sl;
    return kv_tokring_page_(r, i, &sl)->V + sl * r->dv;
}

/* Position of the first token with global index >= g (count if none). */
int64_t kv_tokring_lower(const kv_tokring *r, int64_t g);

/* Drop every token with global index < g. */
void kv_tokring_drop_below(kv_tokring *r, int64_t g);

/* Fold tokens from..count-1 into nq states with the exact kernel: pages
 * are grouped into fixed slices (64 pages, more for rings of over 4096
 * pages) folded in parallel and merged in order, so the result does not
 * depend on the thread count.  A slice's float pages go to the kernel as
 * one page list (kv_attn_fold_pages, 64 pages a call); coded rows are
 * decoded 64 pages at a time and folded as one block, the same tiles, so a
 * store decoding to the same floats gives the same bits.  Returns KV_OK or
 * the kernel's error (kernels/attn.h). */
int kv_tokring_fold(const kv_tokring *r, int64_t from, const float *Q, int nq, float scale, double *st);

/* What kv_tokring_fold(r, from, .., nq, ..) reads and computes (method.h:
 * kv_cost_add): a key and a value of each token from..count-1 once, and
 * 2 (d + dv) flops per token and query. */
void kv_tokring_cost(const kv_tokring *r, int64_t from, int nq, kv_query_cost *c);

/* Bytes held: every allocated page (keys, values, indices) and the page table. */
size_t kv_tokring_bytes(const kv_tokring *r);

/* The most bytes a ring holding at most n tokens can have allocated. */
int64_t kv_tokring_max_bytes(int d, int dv, int64_t n);

/* Bytes per token of a full page (the unit budget rules divide by). */
int64_t kv_tokring_token_bytes(int d, int dv);

/* Budget rule of the window methods: the most tokens P rings (one per
 * rank) can hold within `bytes` summed over ranks: a token costs its page
 * share plus, at worst, two page-table slots per page; reserved: two
 * part-used pages for each of up to two ranks holding window tokens (shard
 * chunks >= W/2; see tokring.c), one page for the ends, a small table per
 * rank.  0 if none fit; kv_tokring_fit_min is the least budget that holds
 * one token. */
int64_t kv_tokring_fit(int64_t bytes, int d, int dv, int P);
int64_t kv_tokring_fit_min(int d, int dv, int P);

/* Checkpoint: off and count, then the held keys, values and indices
 * oldest first.  The slot of the oldest token is restored, not just the
 * tokens, because page boundaries decide how kv_tokring_fold groups the
 * work and so its rounding. */
void kv_tokring_save(const kv_tokring *r, kv_buf *out);

/* Restore into an empty ring made by kv_tokring_init with the same d, dv
 * and cap.  Rejects (KV_EINPUT, "checkpoint: <in->what> state ...") counts
 * beyond cap or max_tokens (the most tokens the caller can have seen), a
 * bad slot, indices that are not strictly increasing within [0, n_total),
 * and non-finite keys or values (traces hold finite numbers only).  On
 * failure the ring is left as it was. */
int kv_tokring_load(kv_tokring *r, kv_rd *in, int64_t max_tokens, int64_t n_total, kv_err *err);

#endif
