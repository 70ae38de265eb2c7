/* cmd_methods.c - `kvstream methods`: every method, its parameters and what it
 * keeps (the registry's own description, src/methods/registry.c); with
 * --specs, one machine-readable line per method with its small conformance
 * instance (the method lists of the test scripts come from it). */
#include <stdio.h>
#include "cmd/cmd.h"
#include "methods/method.h"
#include "mpi/agree.h"

typedef struct { int specs; } methods_opts;
static const kv_opt methods_table[] = {
    { "specs", 0, KV_OPT_FLAG, KV_AT(methods_opts, specs), .lo = 1,
      .help = "one line per method: name kind spec pinv= semantics= budget= seeded= (spec: a small instance)" },
    { 0 } };

int kv_run_methods(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, help;
    methods_opts o = { 0 };
    MPI_Comm_rank(comm, &rank);
    kv_cmdline c = {
        .cmd = "methods",
        .usage = "",
        .about = "List the methods `replay --methods` accepts, with their parameters\n"
                 "(name:param=value,...; every method also takes name=LABEL).",
        .groups = { { NULL, methods_table, &o } },
    };
    kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, NULL, &help, err);
    if (kv_agree(comm, err) || help) return err->code;
    if (rank == 0 && o.specs) kv_methods_specs(stdout);
    else if (rank == 0) kv_methods_describe(stdout);
    return KV_OK;
}
