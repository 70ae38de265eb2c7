/* batch.h - one batch of queries: partial states on every rank, merged on rank 0.
 *
 * replay_batch_partials walks the batch's queries in order; for each run of
 * queries at the same prefix p it advances the shard to p, has every
 * instance of the one-prefix methods answer them (states laid out
 * [M][S][cnt], packed when cnt < B), merges the (m, l) of the feedback
 * methods' states over the ranks and feeds them back (method.h: feedback),
 * stages a V^T V snapshot and closes a memory epoch.  At most G snapshots
 * are staged (sizes.c: replay_gram_stage): when G are, they are summed
 * onto rank 0, which turns them into |V_p|_op at once.  Methods with
 * partial_batch (method.h) then answer the whole batch in one call each,
 * the shard being at the batch's last prefix, and select methods choose
 * their candidates, merged over the ranks, and answer from the merged lists.
 * replay_batch_merge then merges the states (mpi/merge.h, rank order:
 * bitwise reproducible), the last snapshots, the memory epochs and the
 * queries' costs (replay/cost.h) onto rank 0.
 *
 * The walk has collectives (feedback, snapshot flushes, select): every rank
 * walks every position, a failed one skipping the work, and each of them
 * follows an agreement, so on an error all ranks leave at the same point.
 *
 * Stops inside a batch: after a distinct position (not the batch's last;
 * every 8 positions or shard chunk of tokens, and at --stop-after's), the
 * ranks agree (one small allreduce) on whether a stop signal arrived
 * (core/signals.h) or --stop-after is reached; if so the walk ends there on
 * every rank with b->stop set and b->walked queries walked.  What the walk
 * has built so far (the per-prefix methods' states, staged snapshots,
 * |V_p|_op, memory epochs) goes into the checkpoint (ckptstate.c), and the
 * resumed run continues the same batch from that query: the batch-wide
 * answers (partial_batch, select) run once over the whole batch either way,
 * so the results are bitwise those of an uninterrupted run. */
#ifndef KVSTREAM_REPLAY_BATCH_H
#define KVSTREAM_REPLAY_BATCH_H

#include <stdint.h>
#include "core/buf.h"
#include "core/kverr.h"
#include "mpi/merge.h"
#include "replay/decide.h"
#include "replay/internal.h"
#include "replay/shard.h"

typedef struct {
    int64_t j0, cnt;        /* queries j0 .. j0 + cnt - 1 */
    int64_t nu;             /* distinct prefixes among them */
    int64_t G;              /* V^T V snapshots staged at most */
    int64_t staged, u0;     /* snapshots staged now, and the distinct prefix of the first */
    float *Q;               /* [S][cnt][d] */
    double *send, *recv;    /* partial states [M][S][cnt][KV_PSTATE_LEN(dv)]; recv on rank 0 */
    double *gsend, *gsum;   /* staged V^T V [G][S][dv*dv]; gsum on rank 0; NULL without bound ratio */
    double *opn;            /* rank 0: |V_p|_op per distinct prefix [nu][S]; NULL without bound ratio */
    double *vsq;            /* rank 0: trace(V_p^T V_p) = sum of |v|^2 over the prefix, likewise */
    double *ev, *opG, *work; /* rank 0: Lanczos start vectors [S][dv] carried over the run, scratch */
    int64_t *uidx;          /* [cnt]: query -> its distinct prefix */
    int64_t *ep, *epsum;    /* memory epochs [nu][M]: this rank's max bytes per epoch; summed on rank 0 */
    double *ml;             /* feedback: (m, l) pairs [nf][S][g], then the error flag's pair */
    double *sel;            /* select lists [S][cnt][L] of one method */
    replay_decide dz;       /* scratch of the global eviction decisions */
    double *cost, *costsum; /* per-query cost [M][S][cnt][REPLAY_COST_LEN] (replay/cost.h); summed on rank 0 */
    int agreed;             /* the last replay_batch_partials' error is agreed already (same on every rank) */
    int stop;               /* the walk stopped inside the batch on this signal (same on every rank), 0: not */
    int64_t walked;         /* queries walked when it stopped; with --resume, where the restored walk goes on */
    int64_t poll_n, poll_p; /* positions walked since the last stop poll, and the position of that poll */
    kv_merge mg;
    int have_merge;
} replay_batch;

/* Buffers from r->z and the merge operator. */
int replay_batch_new(replay_batch *b, const replay *r, kv_err *err);
void replay_batch_free(replay_batch *b);

/* Collective.  This rank's states for queries j0 .. j0 + cnt - 1.  An error
 * found inside the walk is agreed at its next collective (then b->agreed is
 * set on every rank); one found after the last is left for the caller to
 * agree before merging.  On a stop inside the batch, returns with b->stop
 * set (the caller agrees errors first, then writes the checkpoint).  When
 * b->walked > 0 and j0, cnt are the restored walk's (ckptstate.c), the walk
 * continues after query b->walked. */
int replay_batch_partials(replay_batch *b, replay *r, replay_shard *sh, int64_t j0, int64_t cnt, kv_err *err);

/* Collective: the merged states, |V_p|_op of the last snapshots and the
 * memory epochs summed over ranks into recv, opn and epsum on rank 0. */
/* Collective: the rest of the shard after the last query (the last memory
 * epoch), with the deciding methods' decisions on the way (decide.h).
 * Nonzero only for an error every rank holds. */
int replay_batch_tail(replay_batch *b, replay *r, replay_shard *sh, kv_err *err);

int replay_batch_merge(replay_batch *b, const replay *r, kv_err *err);

/* Checkpoints (replay/ckptstate.h frames them).  save: the walk of a batch
 * stopped inside it, only what the walk has answered (the partial states
 * and costs of the methods answered in the walk, for the queries walked;
 * the methods answered after the walk have nothing yet), and on rank 0 the
 * Lanczos start vectors carried over the run.  load: the same into a batch
 * made by replay_batch_new, from query next; every count checked against
 * the batch size.  Returns KV_OK or KV_EINPUT (corrupt). */
void replay_batch_save(const replay_batch *b, const replay *r, kv_buf *out);
int replay_batch_load(replay_batch *b, const replay *r, kv_rd *rd, int64_t next, kv_err *err);

#endif
