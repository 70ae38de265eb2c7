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
#include "methods/method.h"

/* Per-method figures handed back to a caller (e.g. the sweep). */
typedef struct {
    char label[64];
    int64_t memory_bytes;
    double mean_error, p95_error, max_error;
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
    int64_t stop_after;     /* stop as a signal would (checkpoint, status 3) once this many queries are done (0: never) */
    kv_reference reference; /* --reference memory|stream|none */
    const char *floors;     /* --floors FILE: read the floors there, or measure and write them (NULL: measure) */
} kv_replay_opts;

void kv_replay_defaults(kv_replay_opts *o);

/* Collective.  Errors are agreed across ranks: every rank returns the same
 * code and message.  res (may be NULL) is filled on every rank on success. */
int kv_replay_run(const kv_replay_opts *o, MPI_Comm comm, kv_replay_result *res, kv_err *err);

void kv_replay_result_free(kv_replay_result *res);

#endif
