/* cmd_replay.c - `kvstream replay`: run methods over a trace (src/replay/replay.c). */
#include <stdio.h>
#include "cmd/cmd.h"
#include "mpi/agree.h"
#include "replay/replay.h"

#define R(member) KV_AT(kv_replay_opts, member)

/* --semantics stores the index of its choice: the order of kv_semantics */
_Static_assert(KV_SEM_FULL == 0 && KV_SEM_WINDOW_UNMASKED == 1 && sizeof(kv_semantics) == sizeof(int),
               "--semantics choices follow kv_semantics");

_Static_assert(KV_SCOPE_STREAM == 0 && KV_SCOPE_LAYER == 1 && KV_SCOPE_TRACE == 2,
               "--budget-scope choices follow kv_budget_scope");

_Static_assert(KV_REF_MEMORY == 0 && KV_REF_STREAM == 1 && KV_REF_NONE == 2 && sizeof(kv_reference) == sizeof(int),
               "--reference choices follow kv_reference");

static const kv_opt replay_table[] = {
    { "methods", 0, KV_OPT_STRING, R(methods), .meta = "LIST", .def = "exact",
      .help = "comma-separated method specs (`kvstream methods`); exact is always run" },
    { "budget", 0, KV_OPT_STRING, R(budget), .meta = "X", .def = "each method's own parameters",
      .help = "memory budget per stream for every method that takes budget=: 10% of exact, 8MiB, 500KB, 4096tok" },
    { "budget-scope", 0, KV_OPT_CHOICE, R(budget_scope), .choices = "stream|layer|trace",
      .help = "what a budget (--budget, budget=, tokens=) is a total over: each stream, the kv heads of a layer, or "
              "all streams; the method shares it out (ALGORITHMS.md 4g)" },
    { "strict", 0, KV_OPT_FLAG, R(strict), .lo = 1,
      .help = "refuse the run when --budget cannot hold a method's minimum state (default: report it and run the rest)" },
    { "output", 'o', KV_OPT_STRING, R(out), .meta = "FILE", .help = "results file (docs/RESULTS_FORMAT.md)" },
    { "save-outputs", 0, KV_OPT_FLAG, R(save_outputs), .lo = 1, .help = "store every method's outputs in -o" },
    { "batch", 0, KV_OPT_INT, R(batch), .lo = 1, .hi = 1 << 20, .meta = "B",
      .help = "queries merged on rank 0 per MPI reduction" },
    { "seed", 0, KV_OPT_INT, R(seed), .lo = 0, .hi = INT64_MAX, .meta = "X", .help = "seeds every randomised method" },
    { "semantics", 0, KV_OPT_CHOICE, R(semantics), .choices = "full|window-unmasked-values",
      .help = "attention semantics (ALGORITHMS.md section 3)" },
    { "window", 0, KV_OPT_INT, R(window), .lo = 1, .hi = INT64_C(1) << 40, .meta = "W", .def = "none",
      .help = "W for --semantics window-unmasked-values" },
    { "shard-chunk", 0, KV_OPT_INT, R(shard_chunk), .lo = 1, .hi = INT64_C(1) << 30, .meta = "C",
      .def = "the file's chunk", .help = "tokens per chunk-cyclic shard unit" },
    { "reference", 0, KV_OPT_CHOICE, R(reference), .choices = "memory|stream|none",
      .help = "exact reference: holding its shard, re-read from the trace per batch (holds nothing), or none "
              "(no rel_error / bound_ratio)" },
    { "no-bound-ratio", 0, KV_OPT_FLAG, R(bound_ratio), .lo = 0,
      .help = "skip the V^T V accumulation behind the bound-ratio metric" },
    { "quiet", 'q', KV_OPT_FLAG, R(quiet), .lo = 1, .help = "no progress line on stderr" },
    { "max-memory", 0, KV_OPT_SIZE, R(max_memory), .meta = "SIZE", .def = "no limit",
      .help = "refuse a run whose per-rank bound exceeds SIZE (512M = 512MiB, 4G = 4GiB; 4GB = 4e9 bytes)" },
    { "checkpoint", 0, KV_OPT_STRING, R(checkpoint), .meta = "FILE",
      .help = "write checkpoints here (on SIGTERM/SIGUSR1, --checkpoint-every, --stop-after)" },
    { "checkpoint-every", 0, KV_OPT_INT, R(checkpoint_every), .lo = 1, .hi = INT64_C(1) << 40, .meta = "N",
      .def = "only when stopped", .help = "also checkpoint after every N queries" },
    { "resume", 0, KV_OPT_STRING, R(resume), .meta = "FILE", .help = "continue from this checkpoint" },
    { "stop-after", 0, KV_OPT_INT, R(stop_after), .lo = 1, .hi = INT64_MAX, .meta = "N", .def = "never",
      .help = "stop as a signal would once N queries are done (at the first query position from N on, "
              "inside a batch too): write the checkpoint if --checkpoint is given, exit status 3" },
    { "floors", 0, KV_OPT_STRING, R(floors), .meta = "FILE", .def = "measured once per run",
      .help = "read the time/floor column's limits from FILE (`kvstream floors -o FILE`); a missing FILE is "
              "measured and written" },
    { 0 } };

int kv_run_replay(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, help;
    MPI_Comm_rank(comm, &rank);
    kv_replay_opts o;
    kv_replay_defaults(&o);
    kv_cmdline c = {
        .cmd = "replay",
        .usage = "FILE [--methods LIST] [options]",
        .about = "Replay a kvtrace through exact attention and the methods, sharded over the MPI ranks;\n"
                 "rank 0 prints a summary table (and writes -o).",
        .operand = "trace file",
        .groups = { { NULL, replay_table, &o } },
    };
    if (!kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, &o.trace, &help, err) && !help) {
        if (!o.methods) o.methods = "exact";
        if (o.window && o.semantics != KV_SEM_WINDOW_UNMASKED)
            kv_seterr(err, KV_EINPUT, "replay: --window only applies with --semantics window-unmasked-values");
        else if (o.checkpoint_every && !o.checkpoint)
            kv_seterr(err, KV_EINPUT, "replay: --checkpoint-every needs --checkpoint FILE");
    }
    if (kv_agree(comm, err) || help) return err->code;
    o.table = rank == 0 ? stdout : NULL;
    kv_cmd_check_placement("replay", comm);
    return kv_replay_run(&o, comm, NULL, err);
}
