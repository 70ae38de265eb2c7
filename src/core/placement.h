/* placement.h - where this process may run, for the hybrid MPI x OpenMP check.
 *
 * mpirun binds each rank to one core by default when np <= 2, and Slurm
 * binds tasks to --cpus-per-task CPUs: OMP_NUM_THREADS=T threads then share
 * fewer CPUs than T and a hybrid run silently loses its threads.  The
 * commands compare the two at start-up and say so (src/cmd/cmd_placement.c). */
#ifndef KVSTREAM_PLACEMENT_H
#define KVSTREAM_PLACEMENT_H

/* Logical CPUs in this process's affinity mask (sched_getaffinity), or -1
 * when the system cannot tell. */
int kv_affinity_cpus(void);

#endif
