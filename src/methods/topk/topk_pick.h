/* topk_pick.h - one query's k largest logits, fed a block at a time in row
 * order (topk.c's select, single and batch).
 *
 * Threshold filtering rather than a heap: a logit above the running
 * threshold (the k-th largest kept, -inf until k are kept) is appended to a
 * buffer (kv_tk_cap); a full buffer is cut back to its k largest (its k-th found by bisection),
 * raising the threshold.  Blocks of 16 logits with none above it (nearly
 * all once the list settles) cost one vector max.  What comes out is what
 * the heap gave: the k largest values (a multiset, sorted), rows realising
 * them, and the largest value left out; only the rows chosen among ties at
 * the k-th value can differ, and with such a tie the largest left out
 * equals the k-th, so topk's fold never uses the rows then. */
#ifndef KVSTREAM_TOPK_PICK_H
#define KVSTREAM_TOPK_PICK_H

#include <stddef.h>
#include <stdint.h>

#ifndef KV_TK_GROW
#define KV_TK_GROW 2 /* a cut each time the buffer holds (1 + GROW) k */
#endif
#define KV_TK_OML 16 /* lanes of the left-out maxima */

typedef struct {
    float *v;         /* the buffer: values, */
    int64_t *r;       /* and rows, kv_tk_cap(k) of each */
    size_t n, cap, k; /* held, capacity, wanted */
    float thr;        /* a logit enters only above it */
    float om;         /* the largest logit left out so far (-inf: none), */
    float omv[KV_TK_OML]; /* and lane-wise from the chunk filter */
} kv_tk_picker;

/* buffer entries a picker of k holds: k + min(KV_TK_GROW k, 4096), at
 * least k + 16 (room for a chunk).  The threshold only rises at a cut, so
 * a large buffer lets it lag: with 15 k, k = 64 at n = 2^16 appended about
 * 4,000 logits per query (3 cuts, each 32 counting passes over 1,024);
 * with 2 k, 2 k per cut and a cut each time the keys seen about triple
 * (~2 k log3(n / k), ~800): 10-12% less batch time. */
static inline size_t kv_tk_cap(size_t k)
{
    size_t x = k < 4096 / KV_TK_GROW ? KV_TK_GROW * k : 4096;
    return k + (x < 16 ? 16 : x);
}

/* bytes of the buffer kv_tk_init takes (its start 8-byte aligned), a
 * multiple of 8 so that buffers laid end to end all start aligned */
static inline size_t kv_tk_bytes(size_t k)
{
    return (kv_tk_cap(k) * (sizeof(int64_t) + sizeof(float)) + 7) / 8 * 8;
}

void kv_tk_init(kv_tk_picker *p, void *buf, size_t k);

/* the largest of a[0..n) (finite): 8 running maxima, so it vectorises */
float kv_tk_max(const float *a, size_t n);

/* Feed the logits a[0..nt) of rows r0.. (in row order), top their largest. */
void kv_tk_feed(kv_tk_picker *p, const float *a, size_t r0, size_t nt, float top);

/* The list, descending, into sel (padded to L with -inf), its k rows
 * ascending into rows, k into *nrows, the largest logit left out into *out. */
void kv_tk_done(kv_tk_picker *p, int L, double *sel, int64_t *rows, int64_t *nrows, float *out);

#endif
