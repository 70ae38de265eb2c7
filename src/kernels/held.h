/* held.h - attention over the rows an evicting method holds.
 *
 * For methods that keep a small set of tokens (h2o, tova, snapkv,
 * expected-attention) and rescore them from the global softmax:
 *   - each logit is kv_dot_fixed(q, k) * (float)scale in float
 *     (kernels/dot.h, kv_held_logit), bitwise, however it is computed here
 *     (8 keys at a time) or in the methods' scoring (kv_held_logits), in any
 *     build: so a score exp(a - M) / L sees the very logits whose max is M;
 *   - the state is double: per tile of KV_HELD_TILE rows, the tile's float
 *     max raises the running max (kv_partial_raise_max), then
 *     e = exp(a - m) in double (a vectorised exp within about 1 ulp of
 *     libm's, 0 below a - m < -708) and l, l2 and the value sums u are
 *     summed in double over the tile, then added to the state.  l stays
 *     within a few eps of the exact sum at any rank count (the evictors'
 *     near-tie bound, kernels/evict.h, rests on it) and the outputs within a
 *     few eps of a double reference (the evictor tests compare to one). */
#ifndef KVSTREAM_HELD_H
#define KVSTREAM_HELD_H

#include <stddef.h>
#include "kernels/dot.h"

#define KV_HELD_TILE 64 /* rows per tile of kv_attn_held (and of a caller's decoded rows, kv_held_fold) */

/* The logit of key k under query q as kv_attn_held computes it, for the
 * methods' scoring to recompute bit for bit. */
static inline double kv_held_logit(const float *q, const float *k, int d, double scale)
{
    return (double)(kv_dot_fixed(q, k, d) * (float)scale);
}

/* lg[q * ld + t] = kv_held_logit(Q + q d, K + t d, d, scale) for q < nq,
 * t < n: the same bits, the keys taken 8 at a time. */
void kv_held_logits(const float *Q, int nq, const float *K, size_t n, int d, double scale, double *lg, size_t ld);

/* nq queries (Q: nq x d) over n held rows (K: n x d, V: n x dv) -> nq
 * partial states of KV_PSTATE_LEN(dv) doubles (kernels/partial.h), cleared
 * first (n = 0: empty states).  Tiles of KV_HELD_TILE rows from row 0, each
 * folded by kv_held_fold.  No allocation; returns KV_OK. */
int kv_attn_held(const float *Q, int nq, const float *K, const float *V, size_t n, int d, int dv, double scale,
                 double *st);

/* One tile: rows K, V [0, nt), nt <= KV_HELD_TILE, folded into the nq
 * states st (cleared, or holding the tiles before).  kv_attn_held's step,
 * for a caller that decodes its rows a tile at a time (slots.c): tiles cut
 * at the same rows give the same bits. */
void kv_held_fold(const float *Q, int nq, const float *K, const float *V, int nt, int d, int dv, double scale,
                  double *st);

#endif
