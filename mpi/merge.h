/* merge.h - the MPI reduction that merges partial attention states.
 *
 * One MPI datatype (KV_PSTATE_LEN(dv) contiguous doubles) and one
 * user-defined operator applying kv_partial_merge element by element, so a
 * whole batch (methods x streams x queries) of states is merged in one
 * MPI_Reduce.  The operator is declared non-commutative: MPI then combines
 * ranks in rank order, which makes results bitwise reproducible for a given
 * rank count whatever algorithm the library picks. */
#ifndef KVSTREAM_MERGE_H
#define KVSTREAM_MERGE_H

#include <mpi.h>
#include "kernels/evict.h"
#include <stddef.h>

typedef struct {
    int dv;
    MPI_Datatype type;
    MPI_Op op;
} kv_merge;

int kv_merge_init(kv_merge *mg, int dv);
void kv_merge_free(kv_merge *mg);

/* Merge `count` states from every rank into recv on root (recv may be NULL
 * off root).  Returns an MPI error code (MPI_SUCCESS on success). */
int kv_merge_reduce(const kv_merge *mg, const double *send, double *recv, size_t count, int root, MPI_Comm comm);

/* The driver's method hooks (methods/method.h), each on every rank, in
 * place, with a non-commutative operator (rank order: deterministic for a
 * given rank count, and the same result on every rank).
 *
 * feedback: n pairs (m, l) merged into m = max over ranks, l = sum over
 * ranks of l_r e^(m_r - m) (folded pairwise, so rounding follows the rank
 * order).  An empty state (-inf, 0) is the identity; a pair (flag, 0) with
 * flags 0/1 gives the largest flag, so a caller can carry an error flag. */
int kv_ml_allreduce(double *ml, size_t n, MPI_Comm comm);

/* select: count lists of L doubles (sorted descending, -inf padded), each
 * merged over the ranks into the L largest of their union
 * (kernels/topk_merge.h). */
int kv_topk_allreduce(double *lists, size_t count, int L, MPI_Comm comm);

/* decide (method.h): count lists of L eviction keys (kernels/evict.h:
 * ascending, padded), each merged over the ranks into the L lowest of
 * their union. */
int kv_evict_allreduce(kv_evkey *lists, size_t count, int L, MPI_Comm comm);

#endif
