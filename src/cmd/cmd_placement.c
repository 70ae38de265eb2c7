/* cmd_placement.c - warn when a rank has fewer CPUs than OpenMP threads (cmd.h). */
#include <omp.h>
#include <stdio.h>
#include "cmd/cmd.h"
#include "core/placement.h"
#include "mpi/coll.h"

void kv_cmd_check_placement(const char *cmd, MPI_Comm comm)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    int64_t info[2] = { omp_get_max_threads(), kv_affinity_cpus() }; /* threads, CPUs (-1: unknown) */
    int64_t mine = info[1] > 0 && info[1] < info[0] ? rank : -1, short_rank = -1;
    if (kv_mpi_max_i64(&mine, &short_rank, 1, comm) != MPI_SUCCESS || short_rank < 0) return;
    if (kv_mpi_bcast(info, sizeof info, (int)short_rank, comm) != MPI_SUCCESS) return;
    if (rank == 0)
        fprintf(stderr,
                "kvstream %s: warning: rank %lld runs %lld OpenMP threads on %lld CPU(s) of its affinity mask, so its "
                "threads share cores; under mpirun pass --bind-to none or --map-by slot:PE=%lld, under Slurm "
                "--cpus-per-task=%lld (docs/USER_GUIDE.md: placement)\n",
                cmd, (long long)short_rank, (long long)info[0], (long long)info[1], (long long)info[0],
                (long long)info[0]);
}
