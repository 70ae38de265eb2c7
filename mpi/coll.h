/* coll.h - the collectives kvstream uses, in one place.
 *
 * Every MPI collective of the program goes through mpi/ (the merge
 * reduction in merge.h, error agreement in agree.h, and these): the layers
 * above say what they combine (a sum of counters, a flag any rank raised,
 * rank 0's verdict), not how.  All are collective over comm and return an
 * MPI error code (MPI_SUCCESS on success). */
#ifndef KVSTREAM_COLL_H
#define KVSTREAM_COLL_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

/* Start and stop MPI for the program (main.c); threads: funneled. */
int kv_mpi_init(int *argc, char ***argv);
void kv_mpi_finalize(void);

/* out[i] = sum (or max) over ranks of in[i]; in == out is allowed. */
int kv_mpi_sum_i64(const int64_t *in, int64_t *out, int n, MPI_Comm comm);
int kv_mpi_sum_f64(const double *in, double *out, size_t n, MPI_Comm comm);
int kv_mpi_max_f64(const double *in, double *out, int n, MPI_Comm comm);
int kv_mpi_max_i64(const int64_t *in, int64_t *out, int n, MPI_Comm comm);
int kv_mpi_max_int(const int *in, int *out, int n, MPI_Comm comm);

/* Sum n doubles of every rank into out on root (out unused elsewhere). */
int kv_mpi_reduce_sum_f64(const double *in, double *out, size_t n, int root, MPI_Comm comm);

/* Sum n int64s of every rank into out on root (out unused elsewhere). */
int kv_mpi_reduce_sum_i64(const int64_t *in, int64_t *out, size_t n, int root, MPI_Comm comm);

/* 1 on every rank if any rank passes a non-zero flag, else 0. */
int kv_mpi_any(int flag, MPI_Comm comm);

/* root's bytes to every rank. */
int kv_mpi_bcast(void *buf, size_t bytes, int root, MPI_Comm comm);

/* all[r] = rank r's value, for every rank (all has room for the comm size). */
int kv_mpi_allgather_i64(int64_t mine, int64_t *all, MPI_Comm comm);

/* Wait until every rank is here. */
int kv_mpi_barrier(MPI_Comm comm);

#endif
