/* slots.h - the held rows of an evicting method (h2o, tova, snapkv).
 *
 * Offers one set of per-slot arrays (key, value, token index; with heaps a
 * score, a heap position and up to two min-heaps; per-slot scratch bytes),
 * all sized to one capacity that the method resizes to the slots in use, so
 * that its memory figure (capacity x kv_slots_row_bytes) is what is
 * allocated; the heaps with the slot moves that keep them right, and the
 * lowest keys of heap 0 for a global eviction decision; and the checkpoint
 * form of the arrays with the checks a restored set must pass.  Attention over the
 * held rows is kernels/held.h.
 *
 * Slots in use are always 0 .. held - 1.  Heap 0 is a min-heap of slots by
 * (score, index) (the eviction order), heap 1 a min-heap by index (h2o's
 * recent part); pos[slot] >= 0 is the slot's place in heap 0, pos[slot] < 0
 * is -1 - its place in heap 1.
 *
 * With a coded store (store.h, set by kv_slots_use_store before any row)
 * K and V stay NULL and each slot holds one packed row in `code`; attention
 * and logits then read the rows decoded a tile at a time into scratch that
 * only grows (kv_slots_attn, kv_slots_logits), so no query allocates once
 * the largest call was seen.  Not in the memory figure: that scratch and
 * the logits' (nq doubles a slot), kept between calls. */
#ifndef KVSTREAM_SLOTS_H
#define KVSTREAM_SLOTS_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"
#include "core/kverr.h"
#include "methods/method.h"
#include "methods/common/store.h"

typedef struct {
    int d, dv;
    int nheaps;          /* 0, 1 or 2; > 0 brings score and pos */
    size_t scratch_per;  /* scratch bytes per slot */
    int64_t held, cap;   /* slots in use, allocated (what bytes() counts) */
    int64_t phys;        /* rows the arrays really have: cap, or up to 1/8 more after a small shrink */
    float *K, *V;        /* held keys (cap x d) and values (cap x dv) */
    int64_t *idx;        /* their token indices */
    double *score;
    int32_t *pos;
    int32_t *heap[2];
    int64_t hsize[2];
    /* cap x scratch_per bytes for the method's own per-slot work (snapkv's
     * votes, tova's heap keys: KV_SLOTS_SHUFFLE_SCRATCH); its contents do
     * not survive kv_slots_resize */
    void *scratch;
    const kv_store *store; /* NULL or f32: K and V; else rows in code */
    uint8_t *code;         /* cap x store->row bytes */
    float *tk, *tv, *tq;   /* decode tiles, prepared queries (grow only) */
    double *lg;            /* logits scratch (grow only) */
    size_t qcap, lgcap;
} kv_slots;

#define KV_SLOTS_TILE 64 /* rows decoded at a time */
/* per-slot scratch bytes kv_slots_heapify_shuffled works in (a key and an
 * index a slot): a set made with less heapifies in place, slower */
#define KV_SLOTS_SHUFFLE_SCRATCH 16

/* Bytes one slot costs with this shape (what kv_slots_bytes counts per
 * allocated slot): (d + dv) floats and an index, with heaps a double score,
 * an int32 position and an int32 per heap, then scratch_per. */
int64_t kv_slots_row_bytes(int d, int dv, int nheaps, size_t scratch_per);

/* kv_slots_row_bytes with the row held by store choice `store` (store.h:
 * an index of KV_STORE_CHOICES; 0 = f32, floats). */
int64_t kv_slots_row_bytes_in(int store, int d, int dv, int nheaps, size_t scratch_per);

/* Hold rows in store from now on (an empty set; store outlives s). */
void kv_slots_use_store(kv_slots *s, const kv_store *store);

/* An empty set (no arrays) of this shape; kv_slots_free releases it. */
void kv_slots_init(kv_slots *s, int d, int dv, int nheaps, size_t scratch_per);
void kv_slots_free(kv_slots *s);

/* What attention over the held rows reads and computes (method.h:
 * kv_cost_add): a key and a value of every held slot once, 2 (d + dv) flops
 * per slot and query. */
void kv_slots_cost(const kv_slots *s, int nq, kv_query_cost *c);

/* What a score pass over the held keys costs (h2o's, tova's feedback): a
 * key of every held slot once and its score read and written, 2 d flops
 * per slot and query for the logit. */
void kv_slots_score_cost(const kv_slots *s, int nq, kv_query_cost *c);

/* cap x row bytes: every allocated slot. */
size_t kv_slots_bytes(const kv_slots *s);

/* Resize every per-slot array to rows (>= held; 0 frees them).  A shrink
 * by less than 1/8 of the rows the arrays really have, and a grow back
 * within them, only move cap: an evictor shrinking by a few rows at every
 * decision and growing by as many at the next ingest would otherwise give
 * pages back and fault them in again each time (on a virtual machine that
 * churn was most of h2o's ingest).  The rows really held never exceed the
 * largest cap so far, so the peak of bytes() is the peak allocated.  Returns
 * KV_EINTERNAL only when a grow fails (every array then still holds the old
 * capacity); a failed shrink keeps the larger blocks, so it cannot fail. */
int kv_slots_resize(kv_slots *s, int64_t rows);

/* Capacity for at least need slots, else "<who>: out of memory holding
 * <need> tokens" (KV_EINTERNAL). */
int kv_slots_grow(kv_slots *s, int64_t need, const char *who, kv_err *err);

/* Slot `slot` holds token t: key k, value v, score sc (with heaps).  With
 * a coded store, -1 when k or v cannot be held (store.h). */
int kv_slots_set(kv_slots *s, int32_t slot, const float *k, const float *v, int64_t t, double sc);

/* Slot `to` gets slot from's key, value and index (nothing else). */
void kv_slots_copy_row(kv_slots *s, int64_t to, int64_t from);

/* Slots to .. to+n-1 get slots from .. from+n-1's keys, values and indices
 * (the ranges may overlap): kv_slots_copy_row of n rows, one move per array. */
void kv_slots_copy_rows(kv_slots *s, int64_t to, int64_t from, int64_t n);

/* kv_attn_held over the held rows as held (decoded when coded): the same
 * arithmetic, so a store that holds the numbers exactly (f16 on
 * half-exact data) gives the same bits as floats.  KV_OK or KV_EINTERNAL. */
int kv_slots_attn(kv_slots *s, const float *Q, int nq, double scale, double *st);

/* Logits of nq queries against held slots t0 .. t0+n-1, computed from the
 * keys as held (kv_held_logit, as kv_slots_attn): nq x n doubles, row q
 * for query q, valid until the next call; NULL without memory. */
const double *kv_slots_logits(kv_slots *s, const float *Q, int nq, double scale, int64_t t0, int64_t n);

/* Heap w: add a slot, take the top one out, look at it, and restore the
 * order after the scores changed. */
void kv_slots_push(kv_slots *s, int w, int32_t slot);
int32_t kv_slots_pop(kv_slots *s, int w);
int32_t kv_slots_top(const kv_slots *s, int w);
void kv_slots_heapify(kv_slots *s, int w);
/* kv_slots_heapify's heap (the same layout), faster when the scores were
 * all replaced (few places already in order), in the per-slot scratch when
 * scratch_per >= KV_SLOTS_SHUFFLE_SCRATCH. */
void kv_slots_heapify_shuffled(kv_slots *s, int w);

/* Heap 0 made anew over every slot in use (one heap only: after slots were
 * dropped straight out of it). */
void kv_slots_reheap(kv_slots *s);

/* The eviction key of a slot (with heaps): (score, token index). */
static inline kv_evkey kv_slots_key(const kv_slots *s, int32_t slot)
{
    return (kv_evkey){ s->score[slot], (double)s->idx[slot] };
}

/* The L lowest keys of heap 0, ascending, padded with KV_EVKEY_NONE, the
 * heap unchanged.  KV_EINTERNAL when scratch memory cannot be had. */
int kv_slots_lowest(const kv_slots *s, int L, kv_evkey *out);

/* Free slot x (already out of every heap): the last slot moves into it. */
void kv_slots_drop(kv_slots *s, int32_t x);

/* The held rows for a checkpoint: K, V, idx, then with heaps the scores and
 * each heap as laid out (ties and sift order decide later evictions); pos
 * follows from the heaps. */
void kv_slots_save(const kv_slots *s, kv_buf *out);

/* Read what kv_slots_save wrote, at most `most` rows, into *out, a set of
 * like's shape with capacity = the rows read (none: no arrays), and check
 * it: keys and values finite, indices in [0, idx_end) and distinct, with
 * heaps scores finite and >= 0 and every slot in exactly one valid heap
 * (which sets pos).  Errors: what kv_rd gives, else "checkpoint: <who>
 * state is inconsistent" (KV_EINPUT), nothing kept.  The caller checks its
 * own rules on *out, then either takes it or kv_slots_free's it. */
int kv_slots_load(kv_slots *out, const kv_slots *like, kv_rd *in, int64_t most, int64_t idx_end, const char *who,
                  kv_err *err);

#endif
