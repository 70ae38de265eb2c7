/* methods.c - `kvstream methods`: every method, its parameters and what it
 * keeps (the registry's own description, src/methods/registry.c). */
#include <stdio.h>
#include "cmd/cmd.h"
#include "methods/method.h"
#include "mpi/agree.h"

static const kv_opt methods_table[] = { { 0 } };

int kv_run_methods(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, help;
    MPI_Comm_rank(comm, &rank);
    kv_cmdline c = {
        .cmd = "methods",
        .usage = "",
        .about = "List the methods `replay --methods` accepts, with their parameters\n"
                 "(name:param=value,...; every method also takes name=LABEL).",
        .groups = { { NULL, methods_table, NULL } },
    };
    kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, NULL, &help, err);
    if (kv_agree(comm, err) || help) return err->code;
    if (rank == 0) kv_methods_describe(stdout);
    return KV_OK;
}
