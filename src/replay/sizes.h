/* sizes.h - the driver's buffer sizes, and the --max-memory check.
 *
 * replay_sizes_compute is the one place that says how big each stage's
 * buffers are (replay_sizes, internal.h); the stages allocate exactly that
 * and replay_budget_check adds the counted ones to every method's upper
 * bound, so the check and the allocations cannot drift apart. */
#ifndef KVSTREAM_REPLAY_SIZES_H
#define KVSTREAM_REPLAY_SIZES_H

#include <stddef.h>
#include "core/kverr.h"
#include "replay/internal.h"

/* V^T V snapshots the batch stages before summing them onto rank 0 (at
 * most 64 MiB of them, at least 1, at most B). */
int64_t replay_gram_stage(const replay *r);

/* Needs the shape, C, B, M, rank, the options and the instances' states. */
replay_sizes replay_sizes_compute(const replay *r);

/* The driver's buffers --max-memory counts, in bytes. */
size_t replay_sizes_budgeted(const replay_sizes *z);
/* All of them (the results' replay_buffer_bytes). */
size_t replay_sizes_total(const replay_sizes *z);

/* --max-memory: refuse (KV_EINPUT) when the methods' worst cases on this
 * rank's shard plus the driver's buffers exceed it.  Needs the states. */
int replay_budget_check(const replay *r, kv_err *err);

#endif
