/* decide.h - global eviction decisions (method.h: the decide hooks).
 *
 * At every decision point of the deciding methods (h2o, tova, snapkv),
 * every rank asks each instance how many tokens go over all ranks, sends
 * its lowest candidate keys, and the lists merged over the ranks
 * (mpi/merge.h: kv_evict_allreduce) tell every rank which of its own go:
 * the decision one rank holding every token would make. */
#ifndef KVSTREAM_REPLAY_DECIDE_H
#define KVSTREAM_REPLAY_DECIDE_H

#include "replay/internal.h"

/* Scratch of the decisions, grown as needed; owned by the batch. */
typedef struct {
    int64_t *need;   /* per decision group of every deciding method */
    size_t need_cap;
    kv_evkey *keys;  /* [groups with need > 0][L] */
    size_t keys_cap;
    double *halo;    /* [streams of those groups][halo length] */
    size_t halo_cap;
} replay_decide;

void replay_decide_free(replay_decide *dz);

/* 1 if any method of the run decides globally. */
int replay_decide_any(const replay *r);

/* The next decision point after x that is not a query position (a positive
 * multiple of some deciding method's decide_every), or INT64_MAX. */
int64_t replay_decide_next(const replay *r, int64_t x);

/* Collective: the decisions at point x (at_query: x is a query position)
 * on every rank, also on one that failed (it sends nothing and evicts
 * nothing).  Nonzero only for an error every rank holds (agreed); one of
 * this rank alone is left in err for the walk's next agreement. */
int replay_decide_at(replay_decide *dz, replay *r, int64_t x, int at_query, kv_err *err);

#endif
