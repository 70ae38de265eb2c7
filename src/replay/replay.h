/* replay.h - `kvstream replay`: run methods over a trace, sharded over MPI.
 *
 * Data flow: trace reader -> this rank's chunk-cyclic shard -> one method
 * instance per (method, stream) -> partial states per query -> MPI merge on
 * rank 0 (batched) -> metrics -> results writer and summary table. */
#ifndef KVSTREAM_REPLAY_H
#define KVSTREAM_REPLAY_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include "core/kverr.h"
#include "io/results.h"
#include "methods/method.h"

/* Per-instance figures handed back to a caller (sweep, pareto: src/study/),
 * the numbers of the summary table and of the results file's /methods/<label>
 * attributes, so no caller reopens the results file. */
typedef struct {
    char label[64];
    int64_t memory_bytes;      /* peak over query positions of the state summed over ranks */
    double bits_per_token;     /* memory_bytes x 8 / (S n) */
    double mean_error, p50_error, p95_error, p99_error, max_error; /* rel error over all (stream, query); NaN: --reference none */
    double p95_bound_ratio;    /* NaN without V^T V (--no-bound-ratio) or reference */
    double ingest_tok_s, us_per_query; /* the slowest rank's times */
    double read_bytes_per_query, read_tokens_per_query, flops_per_query; /* means (replay/cost.h) */
    double time_over_floor;    /* NaN: no floors */
} kv_replay_summary;

/* What a replay hands back, on every rank. */
typedef struct {
    int n_methods;              /* in --methods order (exact last if it was added) */
    kv_replay_summary *methods; /* n_methods entries, owned: kv_replay_result_free */
} kv_replay_result;

/* What rel_error and bound_ratio are measured against (docs/USER_GUIDE.md, "Reference
 * modes"): the exact method holding its shard, exact attention re-read from
 * the trace per batch (replay/streamref.h), or nothing. */
typedef enum { KV_REF_MEMORY = 0, KV_REF_STREAM = 1, KV_REF_NONE = 2 } kv_reference;

typedef struct {
    const char *trace;      /* input kvtrace */
    const char *methods;    /* --methods list; exact is added if absent */
    const char *out;        /* results file, NULL: none */
    int save_outputs;       /* write /methods/<label>/outputs */
    int batch;              /* queries per reduction */
    int64_t shard_chunk;    /* tokens per shard unit, 0: the file's chunk */
    uint64_t seed;
    kv_semantics semantics;
    int64_t window;         /* W for window-unmasked-values */
    int bound_ratio;        /* accumulate V^T V for the bound ratio metric */
    int quiet;              /* no progress line */
    FILE *table;            /* where rank 0 prints the summary (NULL: none) */
    const char *checkpoint; /* write checkpoints here (NULL: never) */
    int64_t checkpoint_every; /* queries between checkpoints (0: only on a signal) */
    const char *resume;     /* continue from this checkpoint */
    int64_t max_memory;     /* bytes per rank the run may hold (0: no limit) */
    const char *budget;     /* --budget X: budget=X for every method that takes one and gives none (NULL: none) */
    int budget_scope;       /* --budget-scope stream|layer|trace (kv_budget_scope, method.h) */
    int strict;             /* a method --budget cannot hold is an error (else it is reported and left out) */
    int64_t stop_after;     /* stop as a signal would (checkpoint, status 3) once this many queries are done (0: never) */
    kv_reference reference; /* --reference memory|stream|none */
    const char *floors;     /* --floors FILE: read the floors there, or measure and write them (NULL: measure) */
    /* Rank 0, per merged batch and instance mi (--methods order): the outputs
     * of queries [j0, j0 + cnt) of every stream, z[(s cnt + jj) dv + c].  A
     * failure stops the run with its error.  A --resume run calls it only
     * for the queries after the checkpoint.  NULL: none. */
    int (*on_outputs)(void *ctx, int mi, int64_t j0, int64_t cnt, const float *z, kv_err *err);
    /* Rank 0, after the summary with res filled, while the results file
     * (-o) is still open: the caller's own groups in the same file (pareto's
     * /pareto).  NULL: none; needs a res and an out. */
    int (*on_results)(void *ctx, kv_results *out, const kv_replay_result *res, kv_err *err);
    void *ctx;              /* both callbacks' */
} kv_replay_opts;

void kv_replay_defaults(kv_replay_opts *o);

/* Collective.  Errors are agreed across ranks: every rank returns the same
 * code and message.  res (may be NULL) is filled on every rank on success. */
int kv_replay_run(const kv_replay_opts *o, MPI_Comm comm, kv_replay_result *res, kv_err *err);

void kv_replay_result_free(kv_replay_result *res);

#endif
