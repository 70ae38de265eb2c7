/* cmd_sweep.c - `kvstream sweep`: the command line of the barrier sweep
 * (the search itself: study/sweep.h). */
#include <string.h>
#include "cmd/cmd.h"
#include "mpi/agree.h"
#include "study/sweep.h"

/* the command line: kv_sweep_opts plus room for the two grids */
typedef struct {
    kv_sweep_opts o;
    kv_opt_list n, d;
} sweep_cli;

#define W(member) KV_AT(sweep_cli, member)

static const kv_opt sweep_table[] = {
    { "output", 'o', KV_OPT_STRING, W(o.out), .meta = "FILE", .def = "required", .help = "the /sweep table to write" },
    { "n", 0, KV_OPT_INTLIST, W(n), .lo = 1, .hi = INT64_C(1) << 32, .meta = "N,N,...", .def = "required",
      .help = "grid of token counts" },
    { "d", 0, KV_OPT_INTLIST, W(d), .lo = 1, .hi = INT64_C(1) << 32, .meta = "D,D,...", .def = "required",
      .help = "grid of dimensions" },
    { "methods", 0, KV_OPT_STRING, W(o.methods), .meta = "LIST", .def = "required",
      .help = "method templates, '@' where the searched parameter goes (window:W=@)" },
    { "eps", 0, KV_OPT_DOUBLE, W(o.eps), .meta = "E", .help = "target p95 relative error (> 0)" },
    { "workdir", 0, KV_OPT_STRING, W(o.workdir), .meta = "DIR", .def = ".", .help = "where the generated traces go" },
    { "keep-traces", 0, KV_OPT_FLAG, W(o.keep_traces), .lo = 1, .help = "do not delete the generated traces" },
    { "score", 0, KV_OPT_CHOICE, W(o.score_bits), .choices = "rel|bits",
      .help = "rel: p95 relative error of the output; bits: p95 over probes of the fraction of the target's value "
              "bits the output's sign gets wrong (jl, index, packing)" },
    { "axis", 0, KV_OPT_CHOICE, W(o.axis_reads), .choices = "memory|reads",
      .help = "reads: also record, at each answer, the mean tokens a query read (read_tokens: keys and values "
              "read plus the metadata scanned, in tokens' worth of bytes; summed over ranks)" },
    { "seeds", 0, KV_OPT_INT, W(o.seeds), .lo = 1, .hi = 64, .meta = "K", .def = "1",
      .help = "randomised methods: K seeds per budget, judged by the median p95" },
    { 0 } };

int kv_run_sweep(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, help;
    MPI_Comm_rank(comm, &rank);
    sweep_cli w;
    memset(&w, 0, sizeof w);
    kv_gen_defaults(&w.o.gen);
    w.o.gen.kind = "jl";
    w.o.gen.m = 64;
    w.o.eps = 0.1;
    kv_cmdline c = {
        .cmd = "sweep",
        .usage = "--n 512,1024 --d 16,48 --methods 'window:W=@,subgen:delta=1,t=@,s=@' --eps E -o FILE [options]",
        .about = "For every (n, d) and method template, the smallest budget whose p95 relative error is <= eps\n"
                 "(doubling from 1 to n, then bisection to 1/8); generates one trace per (n, d) of the grid.\n"
                 "With --query-at end (the default for index and packing) only probes after the stream are scored.\n"
                 "Templates may search a budget: subgen:delta=0.1,t=1,joint=1,budget=@tok.",
        .groups = { { "sweep", sweep_table, &w }, { "generator", kv_gen_opt_table, &w.o.gen } },
    };
    kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, NULL, &help, err);
    if (kv_agree(comm, err) || help) return err->code;
    w.o.ns = w.n.v;
    w.o.nn = w.n.n;
    w.o.ds = w.d.v;
    w.o.nd = w.d.n;
    w.o.table = rank == 0 ? stdout : NULL;
    kv_cmd_check_placement("sweep", comm);
    return kv_sweep_run(&w.o, comm, err);
}
