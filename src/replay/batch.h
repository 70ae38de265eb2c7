/* batch.h - one batch of queries: partial states on every rank, merged on rank 0.
 *
 * replay_batch_partials walks the batch's queries in order; for each run of
 * queries at the same prefix p it advances the shard to p and has every
 * instance of the one-prefix methods answer them, writing states laid out
 * [M][S][cnt] (packed when cnt < B), and snapshots V^T V once per distinct
 * prefix.  Methods with partial_batch (method.h) then answer the whole batch
 * in one call each, the shard being at the batch's last prefix.  replay_batch_merge
 * then merges the states (mpi/merge.h, rank order: bitwise reproducible) and
 * sums the V^T V snapshots onto rank 0. */
#ifndef KVSTREAM_REPLAY_BATCH_H
#define KVSTREAM_REPLAY_BATCH_H

#include <stdint.h>
#include "core/kverr.h"
#include "mpi/merge.h"
#include "replay/internal.h"
#include "replay/shard.h"

typedef struct {
    int64_t j0, cnt;        /* queries j0 .. j0 + cnt - 1 */
    int64_t nu;             /* distinct prefixes among them */
    float *Q;               /* [S][cnt][d] */
    double *send, *recv;    /* partial states [M][S][cnt][KV_PSTATE_LEN(dv)]; recv on rank 0 */
    double *gsend, *gsum;   /* V^T V at each distinct prefix [nu][S][dv*dv]; gsum on rank 0; NULL without bound ratio */
    int64_t *uidx;          /* [cnt]: query -> its distinct prefix */
    kv_merge mg;
    int have_merge;
} replay_batch;

/* Buffers from r->z and the merge operator. */
int replay_batch_new(replay_batch *b, const replay *r, kv_err *err);
void replay_batch_free(replay_batch *b);

/* This rank's states for queries j0 .. j0 + cnt - 1.  On an error the rank
 * stops early; the caller agrees before merging. */
int replay_batch_partials(replay_batch *b, replay *r, replay_shard *sh, int64_t j0, int64_t cnt, kv_err *err);

/* Collective: the merged states (and V^T V sums) into recv (gsum) on rank 0. */
int replay_batch_merge(replay_batch *b, const replay *r, kv_err *err);

#endif
