/* errstats.h - the error figures a reader sees first, over all queries or
 * per stream.
 *
 * Percentiles (p50, p95, p99, max) of rel_error take every query; the mean
 * leaves out small outputs (kernels/metrics.h: KV_SMALL_OUTPUT), which are
 * counted instead; the bound ratio's p95 takes every query (it divides by
 * |softmax|_2 |V_p|_op, never by a small output).  Rank 0 only: it reads
 * the sink's per-query metrics. */
#ifndef KVSTREAM_REPLAY_ERRSTATS_H
#define KVSTREAM_REPLAY_ERRSTATS_H

#include <stdint.h>
#include "core/kverr.h"
#include "io/results.h"
#include "replay/internal.h"
#include "replay/sink.h"

typedef struct {
    double p50, p95, p99, max; /* of rel_error, every query */
    double mean;               /* of rel_error without the small outputs */
    double bound_p95;          /* of bound_ratio (NaN without V^T V) */
    int64_t small;             /* queries whose exact output is small */
} replay_errstats;

/* Method mi over the queries of stream s, or of every stream (s < 0). */
replay_errstats replay_errstats_of(const replay *r, const replay_sink *k, int mi, int64_t s);

/* Group g/per_stream: one entry per stream of each figure, and the stream's
 * (layer, kv head) when the trace has n_layers x n_kv_heads = S streams. */
int replay_errstats_write(const replay *r, const replay_sink *k, kv_results *x, int mi, const char *g, kv_err *err);

#endif
