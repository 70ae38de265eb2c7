/* merge.c - user-defined MPI reduction over partial attention states. */
#include <limits.h>
#include "mpi/merge.h"
#include "kernels/partial.h"

static void merge_fn(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    int bytes;
    MPI_Type_size(*dt, &bytes);
    int dv = bytes / (int)sizeof(double) - 3; /* the datatype carries dv */
    size_t sl = KV_PSTATE_LEN(dv);
    const double *a = in;
    double *b = inout;
    /* MPI defines inout = in (op) inout; in comes from lower ranks */
    for (int i = 0; i < *len; i++) {
        double tmp[sl];
        for (size_t k = 0; k < sl; k++) tmp[k] = a[i * sl + k];
        kv_partial_merge(tmp, b + i * sl, dv);
        for (size_t k = 0; k < sl; k++) b[i * sl + k] = tmp[k];
    }
}

int kv_merge_init(kv_merge *mg, int dv)
{
    mg->dv = dv;
    int rc = MPI_Type_contiguous((int)KV_PSTATE_LEN(dv), MPI_DOUBLE, &mg->type);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&mg->type);
    if (rc == MPI_SUCCESS) rc = MPI_Op_create(merge_fn, 0 /* non-commutative: rank order */, &mg->op);
    return rc;
}

void kv_merge_free(kv_merge *mg)
{
    MPI_Op_free(&mg->op);
    MPI_Type_free(&mg->type);
}

int kv_merge_reduce(const kv_merge *mg, const double *send, double *recv, size_t count, int root, MPI_Comm comm)
{
    size_t sl = KV_PSTATE_LEN(mg->dv), step = (size_t)INT_MAX / sl;
    for (size_t off = 0; off < count; off += step) {
        int n = (int)(count - off < step ? count - off : step);
        int rank;
        MPI_Comm_rank(comm, &rank);
        int rc = MPI_Reduce(send + off * sl, rank == root ? recv + off * sl : NULL, n, mg->type, mg->op, root, comm);
        if (rc != MPI_SUCCESS) return rc;
    }
    return MPI_SUCCESS;
}
