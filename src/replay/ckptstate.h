/* ckptstate.h - what a replay checkpoint holds, and writing / resuming it.
 *
 * Each rank's state is one byte string (io/ckpt.h stores them): a magic,
 * then each stage's own bytes, written and read by the stage beside its
 * struct: the shard position and V^T V (shard.h), the walk of a batch
 * stopped inside it, only what it answered, and the Lanczos start vectors
 * (batch.h; the metadata's next_query is then that batch's first query),
 * every instance's timers, peak and state (instances.h: the prefix_state
 * methods, exact, topk, window and sinks, only as token counts, which
 * --resume rebuilds from the trace: shard.h replay_shard_restore), and on
 * rank 0 the metrics so far (sink.h).  A checkpoint falls between memory
 * epochs: each rank's epoch restarts from what it holds.
 * The run's identity (a fingerprint of the trace, the options, the rank
 * count) goes into the file's metadata and is checked on --resume.
 * Writing saves the state twice: once into a counting buffer (its size and
 * each method state's length), then, once the file has room for every
 * rank's, into a bounded buffer whose 4 MiB pieces (KVSTREAM_CKPT_PIECE,
 * for tests) go to their offsets; resuming reads it through one window of
 * that size.  No rank holds a copy of its state. */
#ifndef KVSTREAM_REPLAY_CKPTSTATE_H
#define KVSTREAM_REPLAY_CKPTSTATE_H

#include <stdint.h>
#include "core/kverr.h"
#include "replay/batch.h"
#include "replay/internal.h"
#include "replay/shard.h"
#include "replay/sink.h"

/* Collective, before the first batch.  With --checkpoint or --resume,
 * fingerprints the trace into *fp; with --resume, restores the states, the
 * shard position and the metrics, reopens the results file and sets *next
 * to the first query still to do (else 0).  Errors are agreed. */
int replay_ckpt_begin(replay *r, replay_shard *sh, replay_batch *b, replay_sink *k, int64_t *fp, int64_t *next,
                      kv_err *err);

/* Collective: a checkpoint after queries [0, next) to --checkpoint.
 * Flushes the results file first.  Errors are agreed. */
int replay_ckpt_write(const replay *r, const replay_shard *sh, const replay_batch *b, replay_sink *k, int64_t fp,
                      int64_t next, kv_err *err);

#endif
