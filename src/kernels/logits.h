/* logits.h - one query's logits over a tile of keys held transposed.
 *
 * For batches: a tile of KV_LT keys is packed once (channel-major) and then
 * serves every query of the batch; each logit is bitwise kv_dot_fixed(q, k,
 * d) * scale (kernels/dot.h: lane c mod 8 takes element c, in order, then
 * the fixed tree), because the tokens, not the channels, fill the vector
 * lanes: lane j's chain is the same sequence of fused multiply-adds.
 * kv_lt_logits_q takes several queries at once: a key vector loaded once
 * feeds all of them (the kernel is bound by loads, not FMAs, otherwise). */
#ifndef KVSTREAM_LOGITS_H
#define KVSTREAM_LOGITS_H

#include <stddef.h>

#define KV_LT 32 /* keys per tile */
#define KV_LQ 6  /* queries per call of kv_lt_logits_q that fill its register blocks */

/* KT (d x KV_LT floats, channel c's keys at KT + c KV_LT) <- the nt <=
 * KV_LT rows of K (nt x d, row stride d); zeros beyond nt. */
void kv_lt_pack(const float *K, size_t nt, int d, float *KT);

/* out[t] = kv_dot_fixed(q, key t, d) * scale for the tile's KV_LT keys
 * (padding keys give 0), bitwise; returns their largest (finite logits). */
float kv_lt_logits(const float *q, const float *KT, int d, float scale, float *out);

/* The same for nq queries q[i] (any nq; multiples of KV_LQ use the
 * registers best): out[i KV_LT + t], their largest into top[i]. */
void kv_lt_logits_q(const float *const *q, int nq, const float *KT, int d, float scale, float *out, float *top);

#endif
