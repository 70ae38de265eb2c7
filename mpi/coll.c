/* coll.c - thin, typed wrappers over the MPI collectives kvstream uses. */
#include <limits.h>
#include "mpi/coll.h"

int kv_mpi_init(int *argc, char ***argv)
{
    int provided;
    return MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
}

void kv_mpi_finalize(void) { MPI_Finalize(); }

int kv_mpi_sum_i64(const int64_t *in, int64_t *out, int n, MPI_Comm comm)
{
    return MPI_Allreduce(in == out ? MPI_IN_PLACE : in, out, n, MPI_INT64_T, MPI_SUM, comm);
}

int kv_mpi_sum_f64(const double *in, double *out, size_t n, MPI_Comm comm)
{
    int rc = MPI_SUCCESS;
    for (size_t off = 0; off < n && rc == MPI_SUCCESS; off += (size_t)INT_MAX) {
        int c = (int)(n - off < (size_t)INT_MAX ? n - off : (size_t)INT_MAX);
        rc = MPI_Allreduce(in == out ? MPI_IN_PLACE : in + off, out + off, c, MPI_DOUBLE, MPI_SUM, comm);
    }
    return rc;
}

int kv_mpi_max_f64(const double *in, double *out, int n, MPI_Comm comm)
{
    return MPI_Allreduce(in == out ? MPI_IN_PLACE : in, out, n, MPI_DOUBLE, MPI_MAX, comm);
}

int kv_mpi_max_int(const int *in, int *out, int n, MPI_Comm comm)
{
    return MPI_Allreduce(in == out ? MPI_IN_PLACE : in, out, n, MPI_INT, MPI_MAX, comm);
}

int kv_mpi_max_i64(const int64_t *in, int64_t *out, int n, MPI_Comm comm)
{
    return MPI_Allreduce(in == out ? MPI_IN_PLACE : in, out, n, MPI_INT64_T, MPI_MAX, comm);
}

/* MPI counts are int: reduce in slices so any n works */
static int reduce_sum(const void *in, void *out, size_t n, size_t elem, MPI_Datatype type, int root, MPI_Comm comm)
{
    const size_t step = (size_t)INT_MAX / 2;
    int rank, rc = MPI_SUCCESS;
    MPI_Comm_rank(comm, &rank);
    for (size_t off = 0; off < n && rc == MPI_SUCCESS; off += step) {
        int c = (int)(n - off < step ? n - off : step);
        rc = MPI_Reduce((const char *)in + off * elem, rank == root ? (char *)out + off * elem : NULL, c, type, MPI_SUM,
                        root, comm);
    }
    return rc;
}

int kv_mpi_reduce_sum_f64(const double *in, double *out, size_t n, int root, MPI_Comm comm)
{
    return reduce_sum(in, out, n, sizeof(double), MPI_DOUBLE, root, comm);
}

int kv_mpi_reduce_sum_i64(const int64_t *in, int64_t *out, size_t n, int root, MPI_Comm comm)
{
    return reduce_sum(in, out, n, sizeof(int64_t), MPI_INT64_T, root, comm);
}

int kv_mpi_any(int flag, MPI_Comm comm)
{
    int mine = flag != 0, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_LOR, comm);
    return any;
}

int kv_mpi_bcast(void *buf, size_t bytes, int root, MPI_Comm comm)
{
    const size_t step = (size_t)INT_MAX / 2;
    int rc = MPI_SUCCESS;
    for (size_t off = 0; off < bytes && rc == MPI_SUCCESS; off += step) {
        int c = (int)(bytes - off < step ? bytes - off : step);
        rc = MPI_Bcast((char *)buf + off, c, MPI_BYTE, root, comm);
    }
    return rc;
}

int kv_mpi_allgather_i64(int64_t mine, int64_t *all, MPI_Comm comm)
{
    return MPI_Allgather(&mine, 1, MPI_INT64_T, all, 1, MPI_INT64_T, comm);
}

int kv_mpi_barrier(MPI_Comm comm) { return MPI_Barrier(comm); }
