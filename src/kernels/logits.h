/* logits.h - one query's logits over a tile of keys held transposed.
 *
 * For batches: a tile of KV_LT keys is packed once (channel-major) and then
 * serves every query of the batch; each logit is bitwise kv_dot_fixed(q, k,
 * d) * scale (kernels/dot.h: lane c mod 8 takes element c, in order, then
 * the fixed tree), because the tokens, not the channels, fill the vector
 * lanes: lane j's chain is the same sequence of fused multiply-adds. */
#ifndef KVSTREAM_LOGITS_H
#define KVSTREAM_LOGITS_H

#include <stddef.h>

#define KV_LT 32 /* keys per tile */

/* KT (d x KV_LT floats, channel c's keys at KT + c KV_LT) <- the nt <=
 * KV_LT rows of K (nt x d, row stride d); zeros beyond nt. */
void kv_lt_pack(const float *K, size_t nt, int d, float *KT);

/* out[t] = kv_dot_fixed(q, key t, d) * scale for the tile's KV_LT keys
 * (padding keys give 0), bitwise; returns their largest (finite logits). */
float kv_lt_logits(const float *q, const float *KT, int d, float scale, float *out);

#endif
