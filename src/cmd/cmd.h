/* cmd.h - the subcommands of kvstream, one file each in src/cmd/.
 *
 * Every command has the same entry point: argv[0] is the command word
 * ("replay"), the rest its arguments; it runs on every rank of comm and
 * returns KV_OK or the error code, with the message in err, agreed across
 * ranks (mpi/agree.h) so that all ranks return the same.  Commands never
 * print errors: src/main.c prints the one line on rank 0 and sets the exit
 * status.  Options come from the tables of cmd/opts.h; `CMD --help` prints
 * them on rank 0 and returns KV_OK. */
#ifndef KVSTREAM_CMD_H
#define KVSTREAM_CMD_H

#include <mpi.h>
#include "core/kverr.h"
#include "cmd/opts.h"

typedef int (*kv_cmd_fn)(int argc, char **argv, MPI_Comm comm, kv_err *err);

int kv_run_gen(int argc, char **argv, MPI_Comm comm, kv_err *err);     /* cmd_gen.c */
int kv_run_info(int argc, char **argv, MPI_Comm comm, kv_err *err);    /* cmd_info.c */
int kv_run_replay(int argc, char **argv, MPI_Comm comm, kv_err *err);  /* cmd_replay.c */
int kv_run_sweep(int argc, char **argv, MPI_Comm comm, kv_err *err);   /* cmd_sweep.c */
int kv_run_pareto(int argc, char **argv, MPI_Comm comm, kv_err *err);  /* cmd_pareto.c */
int kv_run_record(int argc, char **argv, MPI_Comm comm, kv_err *err);  /* cmd_record.c */
int kv_run_methods(int argc, char **argv, MPI_Comm comm, kv_err *err); /* cmd_methods.c */
int kv_run_floors(int argc, char **argv, MPI_Comm comm, kv_err *err);  /* cmd_floors.c */
int kv_run_version(int argc, char **argv, MPI_Comm comm, kv_err *err); /* cmd_version.c */

/* Collective: when some rank has fewer CPUs in its affinity mask than
 * OpenMP threads, rank 0 prints one warning line to stderr saying what to
 * pass to mpirun or Slurm (cmd_placement.c).  Not an error: the run goes on. */
void kv_cmd_check_placement(const char *cmd, MPI_Comm comm);

/* The generator options shared by gen and sweep (cmd_gen.c); offsets into
 * kv_gen_opts, so a command lists it with base = its kv_gen_opts. */
extern const kv_opt kv_gen_opt_table[];

#endif
