/* cmd_floors.c - `kvstream floors`: measure the read bandwidth and FMA peak a
 * replay's "time/floor" column is judged against, and write them to a file
 * that `replay --floors FILE` (and pareto, sweep) read back, so that runs on
 * different days compare (docs/PERFORMANCE.md, "Floors"). */
#include <stdio.h>
#include "cmd/cmd.h"
#include "mpi/agree.h"
#include "mpi/jobfloors.h"

typedef struct { const char *out; } floors_opts;
#define F(field) KV_AT(floors_opts, field)

static const kv_opt floors_table[] = {
    { "output", 'o', KV_OPT_STRING, F(out), .meta = "FILE", .def = "print only",
      .help = "write the floors here (the --floors FILE of replay)" },
    { 0 } };

int kv_run_floors(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, help;
    MPI_Comm_rank(comm, &rank);
    floors_opts o = { NULL };
    kv_cmdline c = { .cmd = "floors", .usage = "[-o FILE]",
                     .about = "Measure one rank's read bandwidth and FMA peak (every rank at once, the minimum taken).",
                     .groups = { { NULL, floors_table, &o } } };
    kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, NULL, &help, err);
    if (kv_agree(comm, err) || help) return err->code;
    kv_floors f;
    kv_floors_measure_all(&f, comm, err);
    if (kv_agree(comm, err)) return err->code;
    if (rank == 0) {
        printf("floors: read %.3g GB/s, FMA peak %.3g GFLOP/s per rank (%d threads; %s)\n", f.read_bw / 1e9,
               f.fma_peak / 1e9, f.threads, kv_floor_isa());
        if (o.out) kv_floors_write(o.out, &f, err);
    }
    return kv_agree(comm, err);
}
