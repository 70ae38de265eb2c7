/* agree.c - collective error agreement. */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include "mpi/agree.h"

int kv_agree(MPI_Comm comm, kv_err *err)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    int mine = err->code != KV_OK ? rank : INT_MAX, first;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
    if (first == INT_MAX) return KV_OK;
    int code = err->code;
    MPI_Bcast(&code, 1, MPI_INT, first, comm);
    MPI_Bcast(err->msg, (int)sizeof err->msg, MPI_CHAR, first, comm);
    err->code = code;
    if (size > 1 && rank == first) {
        size_t l = strlen(err->msg);
        snprintf(err->msg + l, sizeof err->msg - l, " (rank %d)", first);
    }
    MPI_Bcast(err->msg, (int)sizeof err->msg, MPI_CHAR, first, comm);
    return code;
}
