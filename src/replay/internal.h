/* internal.h - what the replay stages share (private to src/replay).
 *
 * The driver (replay.c) fills one `replay` before any stage runs: options,
 * the trace and its shape, this rank's place, the method instances and the
 * buffer sizes.  After that the stages only read it, except for the
 * instances' timers, peaks and memory epochs.  Each stage keeps its own buffers in its own
 * struct (shard.h, batch.h, sink.h), made by a _new and released by a _free. */
#ifndef KVSTREAM_REPLAY_INTERNAL_H
#define KVSTREAM_REPLAY_INTERNAL_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include "core/spec.h"
#include "io/trace.h"
#include "kernels/floors.h"
#include "methods/method.h"
#include "replay/replay.h"

/* One method on this rank: one state per stream.  With --reference stream
 * the exact reference is an instance of exact the driver answers from the
 * trace itself (streamed, streamref.h): it has no states (st[] all NULL),
 * is never fed, holds 0 bytes and saves nothing in a checkpoint. */
typedef struct {
    kv_spec spec;
    const kv_method_ops *ops;
    void **st;              /* [S]; NULL entries when streamed */
    int streamed;           /* answered by replay_streamref_answer, not by ops (--reference stream) */
    double t_ingest, t_query; /* seconds on this rank */
    int64_t peak;           /* bytes, this rank, max over time */
    int64_t epoch;          /* bytes, this rank, max since the current memory epoch began
                             * (epochs end at each distinct query position: summed over
                             * ranks per epoch, their max is the method's memory_bytes) */
    /* A method deciding globally (replay/decide.c) is counted at its
     * decision points instead: its state only grows between two of them, so
     * the sum over ranks of each rank's largest state since the last one is
     * what they held together then. */
    int64_t dsub;           /* bytes, this rank, max since the last decision point */
    int64_t dpeak;          /* bytes, all ranks: the largest such sum in the current memory epoch */
    int run_budget;         /* its budget= came from --budget (not the spec) */
    int64_t needs;          /* > 0: --budget does not hold its minimum state on this rank; the
                             * smallest budget per stream that does, in bytes (instances.c) */
} replay_instance;

/* A method dropped because --budget cannot hold its minimum state. */
typedef struct {
    kv_spec spec;
    int64_t needs;          /* bytes per stream, max over ranks */
    int64_t budget;         /* what --budget gave it, bytes per stream */
} replay_unfit;

/* Bytes of every buffer the stages allocate on this rank (0: none here).
 * Written once (sizes.c) and used by the allocations, the --max-memory
 * check and the checkpoint reader's size checks. */
typedef struct {
    /* counted by --max-memory: they grow with the chunk, the batch or m */
    size_t kstage, vstage;  /* shard: one chunk of K and V, every stream */
    size_t gram;            /* shard: V^T V per stream (bound ratio only) */
    size_t queries;         /* batch: its queries, every stream */
    size_t send, recv;      /* batch: partial states [M][S][B]; recv on rank 0 */
    size_t gsend, gsum;     /* batch: V^T V of at most replay_gram_stage positions; gsum on rank 0 */
    size_t opn;             /* batch, rank 0: |V_p|_op per distinct position [B][S] */
    size_t vsq;             /* batch, rank 0: trace(V_p^T V_p) per distinct position [B][S] */
    size_t ep, epsum;       /* batch: memory epochs [B][M] (int64); epsum on rank 0 */
    size_t ml;              /* batch: feedback (m, l) pairs of a position (0: no method has feedback) */
    size_t sel;             /* batch: one select method's lists [S][B][L] (0: none selects) */
    size_t rel, bound;      /* sink, rank 0: per-query metrics [M][S*m] */
    size_t cost, costsum;   /* batch: per-query costs [M][S][B][3] (replay/cost.h); costsum on rank 0 */
    size_t rtok;            /* sink, rank 0: read tokens per query [M][S*m] */
    size_t onr;             /* sink, rank 0: |z*| over the prefix's RMS value norm per query [S*m] */
    /* not counted, as they never were (O(B + S*dv) or --save-outputs only):
     * counting them would change the need --max-memory reports */
    size_t uidx;            /* batch: distinct-position index per query */
    size_t zout;            /* sink, rank 0: one batch of outputs (--save-outputs) */
    size_t ev;              /* batch, rank 0: Lanczos start vector per stream [S][dv] */
} replay_sizes;

typedef struct {
    const kv_replay_opts *o;
    MPI_Comm comm;
    int rank, P, nthreads;
    kv_trace *tr;
    const kv_trace_info *in;
    int64_t S, n, m, d, dv;
    int64_t C;              /* shard unit, tokens: chunks c = rank, rank + P, ... are ours */
    int64_t B;              /* queries per batch: min(--batch, m) */
    int par_streams;        /* OpenMP over streams (else the methods thread over tokens) */
    replay_instance *inst;
    int M, ref;             /* methods, index of the exact reference */
    replay_unfit *unfit;    /* [n_unfit]: methods --budget cannot hold, in --methods order */
    int n_unfit;
    replay_sizes z;
    kv_floors fl;           /* one rank's limits (replay_floors_setup); 0: not measured */
} replay;

static inline int64_t replay_min64(int64_t a, int64_t b) { return a < b ? a : b; }

#endif
