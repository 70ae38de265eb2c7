/* pareto.h - error against memory for many (method, budget, seed)
 * instances in one replay (`kvstream pareto`: cmd/cmd_pareto.c plans the
 * instances; docs/PARETO.md).
 *
 * kv_pareto_run replays every row's spec at once (exact computed once), fills
 * each row's figures from the replay's result (no results file read back),
 * adds the table /pareto (study/table.h) to the replay's -o before it is
 * closed, and prints the rows. */
#ifndef KVSTREAM_STUDY_PARETO_H
#define KVSTREAM_STUDY_PARETO_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include "core/kverr.h"
#include "replay/replay.h"

/* one row of /pareto: the instance (filled by the caller), its figures (by kv_pareto_run) */
typedef struct {
    char method[64];  /* the method's name= in --methods, else its name */
    char budget[64];  /* as given in --budgets; "none" for a method without budget= */
    int64_t seed;     /* seed= given to it; -1 for a deterministic method */
    char label[64];   /* its replay label: the group /methods/<label> */
    char spec[256];   /* the spec it ran as */
    int64_t memory;
    double read_bytes, read_tokens; /* per query (replay/cost.h) */
    double p50, p95, mean, max, bound95;
} kv_pareto_row;

typedef struct {
    const char *methods, *budgets; /* as given: /pareto's attributes */
    int seeds;
    int axis;                      /* 0: memory, 1: reads (the printed table's x column; /pareto has both) */
    kv_pareto_row *rows;           /* row 0 is exact; row i is the replay's instance i */
    int nr;
} kv_pareto;

/* Collective.  ro: the replay's other options (trace, out, seed, ...; its
 * methods and callbacks are set here).  Rank 0 prints the rows to table
 * (NULL: not).  Errors are agreed. */
int kv_pareto_run(kv_pareto *p, kv_replay_opts *ro, MPI_Comm comm, FILE *table, kv_err *err);

#endif
