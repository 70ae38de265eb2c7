/* tokring.h - a FIFO of tokens (key, value, global index) for the window
 * methods (window, sinks, unmasked-window, window+subgen).
 *
 * Tokens are pushed in stream order, so the ring is sorted by global index
 * and "the tokens with index >= g" are a suffix of it.  Rows are allocated
 * lazily up to `cap`, so a huge W on a small shard costs only what is held. */
#ifndef KVSTREAM_TOKRING_H
#define KVSTREAM_TOKRING_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"
#include "core/kverr.h"

typedef struct {
    int d, dv;
    int64_t cap;   /* most tokens ever held */
    int64_t alloc; /* rows allocated (<= cap) */
    int64_t head;  /* row of the oldest token */
    int64_t count; /* tokens held */
    float *K, *V;  /* alloc x d, alloc x dv */
    int64_t *idx;  /* global index per row */
} kv_tokring;

void kv_tokring_init(kv_tokring *r, int d, int dv, int64_t cap);
void kv_tokring_free(kv_tokring *r);

/* Append a token; the caller pops first if the ring is full (KV_EINTERNAL
 * otherwise, a bug). */
int kv_tokring_push(kv_tokring *r, const float *k, const float *v, int64_t g, kv_err *err);

/* Drop the oldest token. */
void kv_tokring_pop(kv_tokring *r);

/* i-th oldest token (0 <= i < count). */
static inline int64_t kv_tokring_row(const kv_tokring *r, int64_t i)
{
    int64_t row = r->head + i;
    return row >= r->alloc ? row - r->alloc : row;
}
static inline int64_t kv_tokring_idx(const kv_tokring *r, int64_t i) { return r->idx[kv_tokring_row(r, i)]; }
static inline const float *kv_tokring_v(const kv_tokring *r, int64_t i)
{
    return r->V + kv_tokring_row(r, i) * (size_t)r->dv;
}

/* Position of the first token with global index >= g (count if none). */
int64_t kv_tokring_lower(const kv_tokring *r, int64_t g);

/* Fold tokens from..count-1 into nq states with the exact kernel. */
/* Returns KV_OK or the kernel's error (kernels/attn.h). */
int kv_tokring_fold(const kv_tokring *r, int64_t from, const float *Q, int nq, float scale, double *st);

/* Bytes held: keys, values and the index of every held token. */
size_t kv_tokring_bytes(const kv_tokring *r);

/* Checkpoint: alloc, head and count, then the held keys, values and indices
 * oldest first (three kv_buf_put_arr arrays).  The row layout is restored,
 * not just the tokens: kv_tokring_fold splits its work where the ring wraps
 * and later pushes wrap and regrow by alloc, so the layout decides rounding. */
void kv_tokring_save(const kv_tokring *r, kv_buf *out);

/* Restore into an empty ring made by kv_tokring_init with the same d, dv
 * and cap.  Rejects (KV_EINPUT, "checkpoint: <in->what> state ...") counts
 * beyond cap or max_tokens (the most tokens the caller can have seen), an
 * alloc the ring could not have grown to, indices that are not strictly
 * increasing within [0, n_total), and non-finite keys or values (traces
 * hold finite numbers only).  On failure the ring is left as it was. */
int kv_tokring_load(kv_tokring *r, kv_rd *in, int64_t max_tokens, int64_t n_total, kv_err *err);

#endif
