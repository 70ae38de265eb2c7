/* streamref.h - `--reference stream`: the exact reference without its tokens.
 *
 * `--reference memory` (the default) runs the exact method as the
 * reference: it holds every token of the rank's shard.  With `stream` the
 * reference is a driver mode (replay_instance.streamed, internal.h): an
 * instance of exact with no states, never fed, 0 bytes, nothing in a
 * checkpoint; instead, once per batch,
 * after the walk, replay_streamref_answer re-reads this rank's chunks below
 * the batch's last prefix from the trace, one chunk (all streams) at a time
 * into the shard's staging buffers (so no buffer beyond those --max-memory
 * already counts), and folds each chunk into the states of the queries that
 * see it (kernels/attn.h: kv_attn_fold_multi, as exact's partial_batch
 * does over its held tokens).  The answers equal `memory`'s up to float
 * rounding (the fold runs chunk by chunk, not over one array): relative
 * differences ~1e-15, far below any method's error.  I/O: every batch reads
 * the rank's shard prefix again, S p (d + dv) x 4 bytes / P per rank. */
#ifndef KVSTREAM_REPLAY_STREAMREF_H
#define KVSTREAM_REPLAY_STREAMREF_H

#include <stdint.h>
#include "core/kverr.h"
#include "methods/method.h"
#include "replay/batch.h"
#include "replay/internal.h"
#include "replay/shard.h"

/* States of the batch's cnt queries (prefixes p[0..cnt), non-decreasing)
 * for instance mi into b->send, every stream, from the trace.  Leaves the
 * shard's staging buffers holding no chunk (sh->loaded = -1).  Independent
 * I/O only: no collective, so ranks may be at different chunks. */
int replay_streamref_answer(replay_batch *b, replay *r, replay_shard *sh, int mi, const int64_t *p, kv_err *err);

#endif
