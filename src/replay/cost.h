/* cost.h - what each method's answers read and computed, per query
 * (method.h: kv_query_cost).
 *
 * Around every answering call (and a feedback call) on stream s the driver
 * takes replay_cost_begin before and replay_cost_end after: with the
 * method's cost hook, the difference of its cumulative counters; without
 * it, derived for an answering call as method.h says (every held byte,
 * every kept token, 2 (d + dv) flops per kept token, per query).  A call's
 * figures are split evenly over its g queries, into slots of
 * REPLAY_COST_LEN doubles per query (read bytes, read tokens, flops), which
 * the batch sums over the ranks: a query's cost is what all ranks did for
 * it.  For a multi-position call (partial_batch, select) a query's figure
 * is thus the call's mean: a tile read once for the whole batch counts once. */
#ifndef KVSTREAM_REPLAY_COST_H
#define KVSTREAM_REPLAY_COST_H

#include <stdint.h>
#include "replay/internal.h"

enum { REPLAY_COST_BYTES = 0, REPLAY_COST_TOKENS = 1, REPLAY_COST_FLOPS = 2, REPLAY_COST_LEN = 3 };

/* x's counters on stream s now (zeros without a hook). */
void replay_cost_begin(const replay_instance *x, int64_t s, kv_query_cost *c);

/* Adds to slot[q * REPLAY_COST_LEN + k], q < g, the call's cost since c0
 * split over its g queries; derive: an answering call (a method without a
 * hook gets the derived figures; a feedback call adds nothing then). */
void replay_cost_end(const replay *r, const replay_instance *x, int64_t s, const kv_query_cost *c0, int64_t g,
                     int derive, double *slot);

/* The derived cost of ONE query on state st of ops (also for tests and
 * bench_methods): bytes(), kept_tokens (0 without extra), 2 (d + dv) flops
 * per kept token. */
kv_query_cost replay_cost_derived(const kv_method_ops *ops, const void *st, int d, int dv);

/* Collective: r->fl, the limits of one rank for the "time/floor" column
 * (replay_summary calls it once, at the end of the run).
 * With --floors FILE read there (rank 0, broadcast) when the file exists,
 * else measured and written there by rank 0.  Measured on every rank at
 * once (after a barrier) and the minimum of each figure taken: the slowest
 * rank sets a query's time, and ranks sharing a node share its memory bus,
 * which probing them together sees.  Skipped (r->fl zero) when the run
 * shows no table and writes no results. */
int replay_floors_setup(replay *r, kv_err *err);

#endif
