/* summary.h - the end of a replay, and the progress line.
 *
 * replay_summary adds each method's figures up over the ranks (memory now,
 * the time-aligned peak from rank 0's memory epochs and the tail's, the
 * largest rank's own peak, clusters, kept tokens; the slowest rank's
 * times), prints the summary table and writes the results file's attributes
 * on rank 0, and fills kv_replay_result on every rank with the figures
 * rank 0 computed. */
#ifndef KVSTREAM_REPLAY_SUMMARY_H
#define KVSTREAM_REPLAY_SUMMARY_H

#include <stdint.h>
#include "core/kverr.h"
#include "replay/internal.h"
#include "replay/sink.h"

/* Collective; measures the floors first (replay_floors_setup, after the
 * peak RSS is read, so its probe is not in peak_rss_bytes).  t_start: omp_get_wtime() when the run began.  res may be NULL. */
int replay_summary(replay *r, const replay_sink *k, double t_start, kv_replay_result *res, kv_err *err);

/* Rank 0, unless --quiet: a progress line on stderr, at most once a second
 * (*last: when the previous one was printed). */
void replay_progress(const replay *r, int64_t done_q, int64_t pos, double t_start, double *last);

#endif
