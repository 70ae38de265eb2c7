/* evict.h - the keys of a global eviction decision (h2o, tova, snapkv).
 *
 * An evictor's decision at a decision point (method.h: decide hooks) drops
 * the `need` globally lowest keys among its candidates on all ranks.  A key
 * is (score, token index): the lower score goes first, and of equal scores
 * the older (lower) index.  Keys travel as two doubles (indices < 2^53 are
 * exact), so a list of L keys is 2L doubles, ascending, padded with
 * KV_EVKEY_NONE; merging two lists keeps the L lowest of their union, so
 * merging the ranks' lists in any order gives the same list (mpi/merge.h:
 * kv_evict_allreduce), and the cut is the decision one rank would make
 * holding every candidate. */
#ifndef KVSTREAM_EVICT_H
#define KVSTREAM_EVICT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    double score, idx;
} kv_evkey;

#define KV_EVKEY_NONE ((kv_evkey){ INFINITY, INFINITY })

/* A decision whose margin, |next - cut| relative to the larger score, is
 * below this is a near-tie: at another rank count the scores (whose softmax
 * sums l are added in another order, a relative change of at most about
 * (tokens + ranks) 2^-53 < 1e-9 for fewer than 2^23 tokens) could order
 * the two keys the other way. */
#define KV_EVICT_TIE_REL 1e-9

static inline int kv_evkey_less(kv_evkey a, kv_evkey b)
{
    return a.score < b.score || (a.score == b.score && a.idx < b.idx);
}

/* 1 if key k is evicted by a decision whose cut (the highest evicted key)
 * is cut. */
static inline int kv_evkey_goes(kv_evkey k, kv_evkey cut) { return !kv_evkey_less(cut, k); }

/* inout <- the L lowest keys of inout and in (both ascending, padded). */
void kv_evict_merge(kv_evkey *inout, const kv_evkey *in, int L);

/* out <- the L lowest of keys[0..n), ascending, padded with KV_EVKEY_NONE.
 * keys is reordered (a selection, then a sort of the L lowest). */
void kv_evict_lowest(kv_evkey *keys, size_t n, int L, kv_evkey *out);

/* out <- the L lowest keys (score[i], idx[i]) of the rows i < n with
 * idx[i] >= from (the rows below it are never candidates), ascending,
 * padded with KV_EVKEY_NONE; at[j] (if at is not NULL) <- the row of
 * out[j], -1 for padding.  One pass keeping the L lowest in a max-heap:
 * about one comparison per row, no copy of the rows (the evictors whose
 * keys sit in their own arrays call it at every decision).  The same keys
 * as kv_evict_lowest over those rows.  KV_EINTERNAL without scratch. */
int kv_evict_lowest_cols(const double *score, const int64_t *idx, size_t n, int64_t from, int L, kv_evkey *out,
                         int64_t *at);

/* 1 if the decision that evicted cut and kept next (the lowest kept
 * candidate; KV_EVKEY_NONE if none) is a near-tie (KV_EVICT_TIE_REL).
 * Exactly equal scores are not: they come from equal inputs (0 for tokens
 * no query weighed, equal keys, pooling windows holding the same votes)
 * that every rank count rounds alike, and the index decides. */
int kv_evict_near_tie(kv_evkey cut, kv_evkey next);

#endif
