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

#endif
