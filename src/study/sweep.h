/* sweep.h - the barrier sweep of the seed paper (`kvstream sweep`: cmd/cmd_sweep.c).
 *
 * For every (n, d) of a grid it generates a trace of the given kind and, for
 * each method template (a spec with '@' where the budget parameter goes,
 * e.g. "window:W=@" or "subgen:delta=0.8,t=@,s=@"), finds by search the
 * smallest parameter whose replay keeps the p95 relative error <= eps:
 * doubling from 1 up to n, then bisection to 1/8 resolution (a parameter
 * the method refuses as too small counts as a miss).  The memory the method
 * held at that parameter is the budget.  Which queries are scored is the
 * generator's --query-at (index, packing: only the probes after the stream).
 * With --axis reads the table also holds read_tokens, the mean tokens a
 * query read at that parameter (summed over ranks; metadata scanned counts
 * as its bytes' worth of tokens), from the replay's read counters.
 * Results go to an HDF5 table /sweep (kind, n, d, method, param,
 * budget_bytes, p95_error, met, exact_bytes, keeps_all, beta, points,
 * refused, read_tokens; docs/RESULTS_FORMAT.md). */
#ifndef KVSTREAM_STUDY_SWEEP_H
#define KVSTREAM_STUDY_SWEEP_H

#include <mpi.h>
#include <stdio.h>
#include "synth/gen.h"
#include "core/kverr.h"

typedef struct {
    kv_gen_opts gen;         /* kind, streams, queries, seed, ... (n, d, out set per point) */
    const int64_t *ns;       /* grid of n */
    int nn;
    const int64_t *ds;       /* grid of d */
    int nd;
    const char *methods;     /* templates */
    double eps;
    const char *workdir;     /* where the generated traces go */
    const char *out;         /* the /sweep table */
    int keep_traces;
    int seeds;               /* randomised methods: seeds per budget (median p95); 0 or 1: one */
    int score_bits;          /* 0: relative error of the output; 1: fraction of the target's value bits the
                              * output's sign gets wrong (traces with /query_target) */
    int axis_reads;          /* 1: also record the tokens a query reads at the answer (the replay's
                              * read_tokens_per_query), the figure the time barrier is about */
    FILE *table;             /* rank 0's progress and final table, NULL: none */
} kv_sweep_opts;

int kv_sweep_run(const kv_sweep_opts *o, MPI_Comm comm, kv_err *err);

#endif
