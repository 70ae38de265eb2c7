/* held.h - attention over the rows an evicting method holds.
 *
 * For methods that keep a small set of tokens (h2o, tova, snapkv) and need
 * their logits to be the same numbers their scoring recomputes: each logit
 * is kv_dot_fixed(q, k) * scale in float (kernels/dot.h, kv_held_logit), then
 * the partial state is summed in double, max-shifted. */
#ifndef KVSTREAM_HELD_H
#define KVSTREAM_HELD_H

#include <stddef.h>
#include "kernels/dot.h"

/* The logit of key k under query q as kv_attn_held computes it, for the
 * methods' scoring to recompute bit for bit. */
static inline double kv_held_logit(const float *q, const float *k, int d, double scale)
{
    return (double)(kv_dot_fixed(q, k, d) * (float)scale);
}

/* nq queries (Q: nq x d) over n held rows (K: n x d, V: n x dv) -> nq
 * partial states of KV_PSTATE_LEN(dv) doubles (kernels/partial.h), cleared
 * first (n = 0: empty states).  Returns KV_OK, or KV_EINTERNAL when
 * scratch memory cannot be had. */
int kv_attn_held(const float *Q, int nq, const float *K, const float *V, size_t n, int d, int dv, double scale,
                 double *st);

#endif
