/* sink.h - rank 0's metrics sink: merged states -> metrics -> results file.
 *
 * For every merged batch it computes each method's relative error against
 * the exact reference (and the bound ratio, from the |V_p|_op the batch
 * computed on rank 0, when V^T V is kept), keeps the running maximum over
 * memory epochs of each method's state summed over ranks, compares
 * exact with the trace's /model_outputs when it has them, keeps the metrics
 * of every query for the summary, and writes the batch's rows to the results
 * file (io/results.h).  Only rank 0 has a sink; the other ranks' stays empty. */
#ifndef KVSTREAM_REPLAY_SINK_H
#define KVSTREAM_REPLAY_SINK_H

#include <stddef.h>
#include <stdint.h>
#include "core/kverr.h"
#include "io/results.h"
#include "replay/batch.h"
#include "replay/internal.h"

typedef struct {
    kv_results *res;        /* results file; NULL: no -o (or not reopened yet on --resume) */
    double *rel;            /* [M][S*m] */
    double *bound;          /* [M][S*m], NaN without V^T V */
    double *rtok;           /* [M][S*m]: tokens each query read, summed over ranks (replay/cost.h) */
    double *onr;            /* [S*m]: |z*| / sqrt(|V_p|_F^2 / p), the exact output's norm over the RMS value
                             * norm of its prefix (NaN without V^T V or a reference); KV_SMALL_OUTPUT */
    double *csum;           /* [M][REPLAY_COST_LEN]: read bytes, read tokens, flops summed over queries */
    int64_t *mem_peak;      /* [M]: max over the memory epochs so far of the bytes summed over ranks */
    double *zref, *z;       /* scratch: [dv], [dv] */
    float *zout;            /* [S][B][dv] with --save-outputs */
    double model_max, model_sum; /* exact vs /model_outputs: max and sum of rel errors */
    int64_t model_cnt;
} replay_sink;

/* Rank 0.  Creates the results file with every dataset, except on --resume
 * (replay_sink_reopen, once the checkpoint is known to fit). */
int replay_sink_new(replay_sink *k, const replay *r, kv_err *err);
int replay_sink_reopen(replay_sink *k, const replay *r, kv_err *err);

/* Rank 0: metrics and result rows of a merged batch. */
int replay_sink_batch(replay_sink *k, const replay *r, const replay_batch *b, kv_err *err);

/* Close the results file (closing flushes: the caller agrees on its error). */
int replay_sink_close(replay_sink *k, kv_err *err);
/* Also closes a results file still open, ignoring its error (one is already agreed). */
void replay_sink_free(replay_sink *k);

/* "/methods/<label>" of instance mi. */
void replay_sink_group(const replay *r, int mi, char *buf, size_t len);

/* Checkpoints (replay/ckptstate.h frames them): on rank 0 the metrics so
 * far (errors, bound ratios, reads, costs, memory peaks, the model-output
 * comparison); nothing on the other ranks. */
void replay_sink_save(const replay_sink *k, const replay *r, kv_buf *out);
int replay_sink_load(replay_sink *k, const replay *r, kv_rd *rd, kv_err *err);

#endif
