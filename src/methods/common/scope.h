/* scope.h - budget scopes for the methods (replay --budget-scope,
 * ALGORITHMS.md section 4g).
 *
 * Under a layer or trace scope a method's budget is a total over the
 * scope's ns consecutive streams.  A scored evictor (h2o, tova, snapkv)
 * then decides for the ns streams together (method.h: decide_group = ns):
 * each stream keeps its own tokens, the need is the group's, and the
 * candidates of all ns streams compete by score (AdaKV's rule).  A key of
 * stream k of the group carries the index idx * ns + k, so ties of score
 * still go to the older token (then to the lower stream) and the index
 * stays exact in a double below 2^53. */
#ifndef KVSTREAM_METHODS_SCOPE_H
#define KVSTREAM_METHODS_SCOPE_H

#include "methods/method.h"
#include "methods/common/slots.h"

/* Streams that share a budget under ctx's scope: 1 (stream), kv_heads
 * (layer) or n_streams (trace). */
int64_t kv_scope_streams(const kv_method_ctx *ctx);

/* One stream's share of a budget= under ctx's scope, in bytes: a fraction
 * is of each stream's own full cache (every stream has n_total tokens), a
 * size in bytes or tokens is the total over the scope's ns streams, split
 * floor(X / ns).  A scoped method holds ns times what this share gives one
 * stream, so a scope never holds more than the stream scope would. */
int64_t kv_scope_share_bytes(const kv_budget *b, const kv_method_ctx *ctx);

/* A bound on one stream's held tokens for max_bytes: B over the scope plus
 * E arriving per stream between decisions, as an even share of the ns
 * streams (the sum over a rank's streams is what max_bytes must bound),
 * and never more than the lim tokens of the shard. */
static inline int64_t kv_scope_held_max(const kv_method_ctx *ctx, int64_t B, int64_t E, int64_t lim)
{
    int64_t ns = kv_scope_streams(ctx), h = (B + ns * E + ns - 1) / ns;
    return h < lim ? h : lim;
}

/* Stream k's key in a group of ns. */
static inline kv_evkey kv_scope_key(kv_evkey key, int ns, int k)
{
    key.idx = key.idx * ns + k;
    return key;
}

/* out <- the L lowest keys of heap 0 over the ns slot sets (kv_scope_key
 * encoded), ascending, padded.  KV_OK or KV_EINTERNAL (scratch). */
int kv_scope_slots_lowest(kv_slots *const *sl, int ns, int L, kv_evkey *out);

/* AdaKV's safeguard as a floor (ALGORITHMS.md 4g): when a group keeps K
 * candidates over its ns streams, each stream keeps at least
 * f = floor(alpha K / ns) of its own, if it has them.  0: no floor. */
static inline int64_t kv_scope_floor(double alpha, int64_t K, int64_t ns)
{
    return ns > 1 && K > 0 && alpha > 0 ? (int64_t)(alpha * (double)K / (double)ns) : 0;
}

/* A decision under the floor f: the merged list (L keys, ascending,
 * kv_scope_key encoded) is walked from the lowest, a key of stream k taken
 * while stream k keeps more than f of its cnt[k] candidates (global
 * counts), until need are taken.  cut[k] <- stream k's last key taken
 * (below every key if none), *next <- the first key not taken that could
 * have been (the near-tie check).  Each stream skips at most f keys, so
 * L >= need + 1 + ns f always holds enough.  f = 0: the plain rule, every
 * cut merged[need - 1].  KV_OK, or KV_EINTERNAL if fewer than need could
 * be taken (counts that disagree with the list). */
int kv_scope_floor_cuts(const kv_evkey *merged, int64_t L, int ns, int64_t need, const int64_t *cnt, int64_t f,
                        kv_evkey *cut, kv_evkey *next);

/* Drop from heap 0 of stream k's slots every slot whose encoded key goes
 * under cut (the heap's lowest first); returns the slots dropped. */
int64_t kv_scope_slots_drop(kv_slots *sl, int ns, int k, kv_evkey cut);

#endif
