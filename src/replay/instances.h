/* instances.h - the method instances of a replay: one per (method, stream).
 *
 * replay_instances_new parses --methods (adding the exact reference when it
 * is absent) and finds every method; replay_instances_create then makes the
 * per-stream states once the trace's shape is known. */
#ifndef KVSTREAM_REPLAY_INSTANCES_H
#define KVSTREAM_REPLAY_INSTANCES_H

#include "core/buf.h"
#include "core/kverr.h"
#include "replay/internal.h"

/* r->inst, r->M, r->ref from r->o->methods. */
int replay_instances_new(replay *r, kv_err *err);
/* Every instance's per-stream states (needs the shape, C, rank and P); with
 * --checkpoint/--resume, also that every method can save and load. */
int replay_instances_create(replay *r, kv_err *err);
/* Collective, after replay_instances_create agreed: every instance whose
 * --budget cannot hold its minimum state on some rank (x->needs > 0; only
 * without --strict) is freed and moved to r->unfit, the same on every rank;
 * r->M and r->ref follow.  KV_EINPUT when no method is left. */
int replay_instances_drop_unfit(replay *r, kv_err *err);
void replay_instances_free(replay *r);

/* Bytes an instance holds now, summed over this rank's streams. */
int64_t replay_instance_bytes(const replay_instance *x, int64_t S);

/* Sample x's bytes now (every stream): updates its peak and current epoch. */
void replay_instance_sample(replay_instance *x, int64_t S);

/* 1 if the method decides its evictions globally (method.h: decide hooks). */
int replay_instance_decides(const replay_instance *x);

/* This rank's share of the memory epoch ending now, for the sum over
 * ranks: its own largest state in the epoch; for a deciding method the
 * epoch's largest state summed over ranks at its decision points, on rank
 * 0 (0 elsewhere). */
int64_t replay_instance_epoch(const replay *r, const replay_instance *x);

/* Checkpoints (replay/ckptstate.h frames them).  An instance of a
 * prefix_state method (exact, topk, window, sinks) is saved as its token
 * counts and rebuilt from the trace on --resume (shard.h); every other
 * saves its per-stream state (method.h save/load).  Both save its peak and
 * timers.  save into a counting buffer fills lens [M][S] (each saved state's
 * length, in that layout); into any other it writes with those lengths and
 * checks them (a save must be deterministic).  load fills kept [M][S]: the
 * rebuilt instances' token counts (-1 for the others), and restarts every
 * instance's memory epoch from what it holds. */
int replay_instance_rebuilt(const replay_instance *x);
int replay_instances_save(const replay *r, kv_buf *out, int64_t *lens, kv_err *err);
int replay_instances_load(replay *r, kv_rd *rd, int64_t *kept, kv_err *err);

#endif
