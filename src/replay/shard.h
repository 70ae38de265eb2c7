/* shard.h - this rank's walk through its chunk-cyclic shard of the trace.
 *
 * The token axis is cut into chunks of C tokens; this rank owns chunks
 * rank, rank + P, rank + 2P, ...  replay_shard_advance reads the owned
 * chunks in stream order into the K/V staging buffers (one chunk of every
 * stream at a time) and hands each token block to every method instance,
 * so that afterwards exactly this rank's tokens below a prefix are ingested
 * (what partial() expects, methods/method.h).  With the bound ratio it also
 * accumulates V^T V of those tokens. */
#ifndef KVSTREAM_REPLAY_SHARD_H
#define KVSTREAM_REPLAY_SHARD_H

#include <stdint.h>
#include "core/buf.h"
#include "core/kverr.h"
#include "replay/internal.h"

typedef struct {
    int64_t cur;            /* next token index to ingest (a token of ours, or n) */
    int64_t loaded;         /* chunk in the staging buffers, -1: none */
    int64_t loaded_cnt;     /* its tokens */
    float *K, *V;           /* staging: [S][loaded_cnt][d], [S][loaded_cnt][dv] */
    double *gram;           /* [S][dv*dv], upper triangle used; NULL without bound ratio */
} replay_shard;

/* Buffers from r->z; positioned at this rank's first token. */
int replay_shard_new(replay_shard *sh, const replay *r, kv_err *err);
void replay_shard_free(replay_shard *sh);

/* Ingest this rank's tokens with index < p (all remaining: p = n). */
int replay_shard_advance(replay_shard *sh, replay *r, int64_t p, kv_err *err);

/* --resume (ckptstate.c): feed this rank's tokens < p to the instances with
 * only[mi] set, in the very blocks replay_shard_advance(p) cut (so that,
 * called for the same positions in order, it rebuilds their state as the
 * run built it), without horizon calls, V^T V, timers or memory samples. */
/* Ingest the rank's tokens < x, without a horizon (a decision point between
 * query positions, replay/decide.h). */
int replay_shard_ingest_to(replay_shard *sh, replay *r, int64_t x, kv_err *err);

int replay_shard_rebuild(replay_shard *sh, replay *r, const char *only, int64_t p, kv_err *err);

/* The rebuild's ingest of the tokens < x without a horizon (a decision
 * point between query positions: the run cut its blocks there). */
int replay_shard_rebuild_ingest(replay_shard *sh, replay *r, const char *only, int64_t x, kv_err *err);

/* Tokens in this rank's chunks (per stream). */
int64_t replay_shard_tokens(const replay *r);

/* Checkpoints (replay/ckptstate.h frames them): the shard position and
 * V^T V.  load checks the position against the trace (KV_EINPUT). */
void replay_shard_save(const replay_shard *sh, const replay *r, kv_buf *out);
int replay_shard_load(replay_shard *sh, const replay *r, kv_rd *rd, kv_err *err);

/* --resume: the instances rebuilt from the trace (prefix_state: only[mi]
 * set) fed again as the run fed them, the walk's positions of queries
 * [0, upto) with the same horizon calls and ingest blocks; then the shard
 * position and every such instance's token count must be the checkpoint's
 * (kept [M][S]).  A stop signal ends the scan (KV_ESTOPPED). */
int replay_shard_restore(replay_shard *sh, replay *r, const char *only, int64_t upto, const int64_t *kept, kv_err *err);

#endif
