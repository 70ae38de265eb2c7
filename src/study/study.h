/* study.h - experiments: many method instances measured in one replay.
 *
 * sweep and pareto put every instance they want measured (a spec each,
 * with its own name=, seed=, budget=) into one list, run one replay of it
 * and read each instance's figures from the replay's result
 * (kv_replay_summary: errors, memory, bits per token, times, reads), never
 * from a results file.  Outputs they score themselves come through the
 * replay's on_outputs callback; tables they write go through study/table.h. */
#ifndef KVSTREAM_STUDY_H
#define KVSTREAM_STUDY_H

#include <mpi.h>
#include <stddef.h>
#include "core/kverr.h"
#include "replay/replay.h"

typedef struct {
    char *list;      /* "spec,spec,...": the replay's --methods */
    size_t len, cap;
    int n;           /* instances so far: instance i is the replay's method i */
} kv_study;

/* Append one instance's spec text. */
int kv_study_add(kv_study *s, const char *spec, kv_err *err);

/* Collective: one replay of the instances with ro's other options (its
 * methods is set to the list).  On success res->methods[i] is instance i
 * (an exact the replay appends comes after the n instances). */
int kv_study_run(const kv_study *s, kv_replay_opts *ro, MPI_Comm comm, kv_replay_result *res, kv_err *err);

void kv_study_free(kv_study *s);

#endif
