/* sampler.h - two one-pass samplers shared by sketching methods.
 *
 * Both only decide WHICH items to keep; the caller stores the payload (a key,
 * a value) in the slot the sampler names.  Randomness comes from a kv_rng the
 * caller owns, so one sketch can drive many samplers from one deterministic
 * sequence.
 *
 * kv_reservoir: Algorithm R.  After n offers it holds min(n, t) items, each of
 *   the n items with probability exactly min(1, t/n).  The i-th offer (i > t)
 *   replaces a uniform slot with probability t/i.  One rng draw per offer
 *   once full.
 *
 * kv_l2_sampler: s independent samplers, each holding one item drawn with
 *   probability w_i / F, F = sum of the weights offered so far (l2 sampling
 *   when w_i = |v_i|^2).  Conceptually sampler j replaces its item by offer i
 *   with probability w_i / F_i.  The probability that an item taken when the
 *   total was F_a survives until the total is F_b telescopes to F_a / F_b, so
 *   sampler j draws u in (0,1] once per replacement and is next replaced by
 *   the first offer that lifts F above thr_j = F_a / u.  Keeping the samplers
 *   in a min-heap on thr makes an offer O(1) unless some sampler replaces its
 *   item (O(log s) each; O(s log(F_n / F_1)) over a stream).  Same
 *   distribution as s coin flips per offer, far fewer random numbers. */
#ifndef KVSTREAM_SAMPLER_H
#define KVSTREAM_SAMPLER_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"
#include "core/kverr.h"
#include "core/rng.h"

typedef struct {
    int64_t n; /* items offered */
    int64_t t; /* capacity */
} kv_reservoir;

void kv_reservoir_init(kv_reservoir *r, int64_t t);

/* Offer the next item: returns the slot (0 .. t-1) to store it in, or -1 if
 * it is not kept.  While n <= t the slots fill in order 0, 1, 2, ... */
int64_t kv_reservoir_offer(kv_reservoir *r, kv_rng *rng);

/* Items held: min(n, t). */
static inline int64_t kv_reservoir_size(const kv_reservoir *r)
{
    return r->n < r->t ? r->n : r->t;
}

typedef struct {
    int s;         /* number of samplers */
    double F;      /* sum of the weights offered */
    int64_t *item; /* id held by sampler j, -1 before the first w > 0 */
    double *w;     /* weight of that item */
    double *thr;   /* sampler j is replaced once F > thr[j] */
    int *heap;     /* sampler ids, a min-heap on thr */
} kv_l2_sampler;

int kv_l2_init(kv_l2_sampler *ls, int s, kv_err *err);
void kv_l2_clear(kv_l2_sampler *ls);

/* Offer item id with weight w (w <= 0 or not finite: ignored, returns 0).
 * Writes the samplers that now hold id into take[] (room for s) and returns
 * how many there are. */
int kv_l2_offer(kv_l2_sampler *ls, kv_rng *rng, int64_t id, double w, int *take);

/* Bytes the sampler holds: ids, weights, thresholds, heap and F. */
size_t kv_l2_bytes(const kv_l2_sampler *ls);

/* Checkpoint: F, then ids, weights, thresholds and the heap as laid out
 * (four kv_buf_put_arr arrays of s elements). */
void kv_l2_save(const kv_l2_sampler *ls, kv_buf *out);

/* Read s samplers written by kv_l2_save into *ls (arrays allocated here:
 * release with kv_l2_clear).  Rejects (KV_EINPUT, "checkpoint: <in->what>
 * state ...") arrays of another length and anything kv_l2_offer cannot
 * produce: F negative or not finite; with F = 0 an id, weight, threshold or
 * heap slot other than kv_l2_init's; with F > 0 an id outside [0, max_id),
 * a weight outside (0, F], a threshold below F, or a heap that is not a
 * permutation of 0 .. s-1 in heap order.  On failure *ls holds nothing. */
int kv_l2_load(kv_l2_sampler *ls, int s, kv_rd *in, int64_t max_id, kv_err *err);

#endif
