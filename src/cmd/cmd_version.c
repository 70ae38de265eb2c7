/* cmd_version.c - `kvstream version` (also `kvstream --version`). */
#include <stdio.h>
#include "cmd/cmd.h"
#include "mpi/agree.h"

static const kv_opt version_table[] = { { 0 } };

int kv_run_version(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, help;
    MPI_Comm_rank(comm, &rank);
    kv_cmdline c = { .cmd = "version", .usage = "", .about = "Print the kvstream version.",
                     .groups = { { NULL, version_table, NULL } } };
    kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, NULL, &help, err);
    if (kv_agree(comm, err) || help) return err->code;
    if (rank == 0) printf("kvstream %s\n", KVSTREAM_VERSION);
    return KV_OK;
}
