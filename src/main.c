/* main.c - the kvstream command line: MPI start and stop, the command table,
 * dispatch, and the one place errors are printed.
 *
 * Every command (src/cmd/, one file each, entry points in cmd/cmd.h) runs
 * under MPI (a plain ./kvstream is a 1-rank job) and returns its error agreed
 * across ranks; rank 0 prints the one line "kvstream: error: MSG" (or the
 * stop message) and all ranks exit with the same status: 0 success,
 * 1 internal error, 2 bad input, 3 stopped by a signal.
 *
 * The stop handlers (core/signals.h) go in before MPI_Init: a SIGTERM or
 * SIGUSR1 that reaches a rank during start-up is recorded, never fatal, and
 * honoured once every rank is up (exit 3, nothing ran).  Commands that do
 * not poll for stops get the default action back after start-up.
 * With no command, the usage goes to stderr and the exit status is 2
 * (`kvstream help` prints it on stdout, status 0).
 * KVSTREAM_READY=1 (tests) makes every process say on stderr when its
 * handlers are in place: "kvstream: ready: pid N handles SIGTERM/SIGUSR1". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cmd/cmd.h"
#include "core/signals.h"
#include "mpi/coll.h"

static const struct {
    const char *name;
    kv_cmd_fn run;
    const char *summary;
    int stops; /* polls kv_signal_pending and stops with exit 3 (the replay does) */
} commands[] = {
    { "gen", kv_run_gen, "write a synthetic trace (clustered, lower-bound instances, ...) with parallel HDF5", 0 },
    { "info", kv_run_info, "shape, storage, attributes and a validation verdict of a trace", 0 },
    { "replay", kv_run_replay, "run exact attention and methods over a trace (--checkpoint/--resume for long runs)", 1 },
    { "sweep", kv_run_sweep, "smallest budget per method for p95 error <= eps over a grid of n and d", 1 },
    { "pareto", kv_run_pareto, "error against memory of every (method, budget, seed) in one replay", 1 },
    { "record", kv_run_record, "record a llama2.c model's keys, values and queries as a trace", 0 },
    { "methods", kv_run_methods, "list the methods and their parameters", 0 },
    { "floors", kv_run_floors, "measure the read bandwidth and FMA peak behind replay's time/floor column", 0 },
    { "version", kv_run_version, "print the version", 0 },
};
enum { NCOMMANDS = sizeof commands / sizeof commands[0] };

static void usage(FILE *f)
{
    fprintf(f, "usage: kvstream <command> [options]   (run under mpirun -np P for P ranks)\n\ncommands:\n");
    for (int i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "  %-8s %s\n\n`kvstream CMD --help` lists a command's options; methods: `kvstream methods`; docs/USER_GUIDE.md.\n",
            "help", "this list (`kvstream help CMD`: CMD --help)");
}

static int find(const char *name)
{
    for (int i = 0; i < NCOMMANDS; i++)
        if (!strcmp(commands[i].name, name)) return i;
    return -1;
}

/* A stop that reached any rank before every rank was up: all stop now,
 * before the command ran (collective). */
static int stopped_at_startup(MPI_Comm comm, kv_err *err)
{
    int sig = kv_signal_pending(), any = 0;
    if (kv_mpi_max_int(&sig, &any, 1, comm) != MPI_SUCCESS)
        return kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the stop signal failed");
    if (any) kv_seterr(err, KV_ESTOPPED, "stopped by signal %d during start-up, before the command ran", any);
    return err->code;
}

int main(int argc, char **argv)
{
    int rank;
    kv_signals_install();
    const char *ready = getenv("KVSTREAM_READY");
    if (ready && *ready && strcmp(ready, "0")) {
        fprintf(stderr, "kvstream: ready: pid %ld handles SIGTERM/SIGUSR1\n", (long)getpid());
        fflush(stderr);
    }
    kv_mpi_init(&argc, &argv);
    kv_signals_install(); /* again, in case the MPI library replaced them */
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_rank(comm, &rank);
    kv_err err = { 0, "" };
    const char *cmd = argc > 1 ? argv[1] : "";
    int k = find(!strcmp(cmd, "--version") ? "version" : cmd);
    if (stopped_at_startup(comm, &err)) {
        /* nothing ran: no checkpoint written, a --resume's file unchanged */
    } else if (k >= 0) {
        if (!commands[k].stops) kv_signals_default();
        commands[k].run(argc - 1, argv + 1, comm, &err);
    } else if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        int j = argc > 2 ? find(argv[2]) : -1;
        char *help_argv[] = { argc > 2 ? argv[2] : NULL, "--help", NULL };
        if (j >= 0) commands[j].run(2, help_argv, comm, &err);
        else if (argc > 2) kv_seterr(&err, KV_EINPUT, "help: unknown command '%s'", argv[2]);
        else if (rank == 0) usage(stdout);
    } else if (!*cmd) {
        /* no command: the usage on stderr (help prints it on stdout), then the one error line */
        if (rank == 0) usage(stderr);
        kv_seterr(&err, KV_EINPUT, "no command given (`kvstream help` prints the list above on stdout)");
    } else {
        char names[256] = "";
        for (int i = 0; i < NCOMMANDS; i++) {
            strcat(names, i ? ", " : "");
            strcat(names, commands[i].name);
        }
        kv_seterr(&err, KV_EINPUT, "unknown command '%s' (commands: %s; `kvstream help` describes them)", cmd, names);
    }
    if (err.code == KV_ESTOPPED && rank == 0) fprintf(stderr, "kvstream: %s\n", err.msg);
    else if (err.code && rank == 0) fprintf(stderr, "kvstream: error: %s\n", err.msg);
    kv_mpi_finalize();
    return err.code;
}
