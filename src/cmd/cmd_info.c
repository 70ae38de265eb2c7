/* cmd_info.c - `kvstream info FILE`: describe a trace and validate it.
 *
 * Metadata checks (io/trace.c), then every rank scans its share of the
 * token axis for non-finite numbers.  The output is the verdict, on stdout
 * (tests parse it): kv_trace_describe's text, then one "verdict: ..." line;
 * an invalid trace also gives the error (exit status 2) like any command. */
#include <stdio.h>
#include <stdlib.h>
#include "cmd/cmd.h"
#include "io/trace.h"
#include "mpi/agree.h"

static const kv_opt info_table[] = { { 0 } };

int kv_run_info(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, P, help;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    const char *path = NULL;
    kv_cmdline c = {
        .cmd = "info",
        .usage = "FILE",
        .about = "Print shape, dtype, chunking, filters and attributes of a kvtrace, then scan every key,\n"
                 "value and query (shared out over the ranks) and print a verdict.  Exit 0 when valid, 2 when not.",
        .operand = "trace file",
        .groups = { { NULL, info_table, NULL } },
    };
    kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, &path, &help, err);
    if (kv_agree(comm, err) || help) return err->code;
    kv_trace *t = kv_trace_open(path, comm, err);
    if (kv_agree(comm, err)) {
        if (rank == 0) printf("verdict: INVALID: %s\n", err->msg);
        return err->code;
    }
    const kv_trace_info *in = kv_trace_get_info(t);
    if (rank == 0) {
        char buf[8192];
        kv_trace_describe(t, buf, sizeof buf);
        fputs(buf, stdout);
    }
    int64_t C = in->chunk > 0 ? in->chunk : 4096;
    float *K = kv_malloc(sizeof(float) * (size_t)(in->S * C * in->d), err);
    float *V = kv_malloc(sizeof(float) * (size_t)(in->S * C * in->dv), err);
    float *Q = kv_malloc(sizeof(float) * (size_t)(in->S * C * in->d), err);
    for (int64_t c = rank; !err->code && c * C < in->n; c += P)
        kv_trace_read_kv(t, c * C, in->n - c * C < C ? in->n - c * C : C, K, V, err);
    for (int64_t c = rank; !err->code && c * C < in->m; c += P)
        kv_trace_read_queries(t, c * C, in->m - c * C < C ? in->m - c * C : C, Q, err);
    free(K); free(V); free(Q);
    int rc = kv_agree(comm, err);
    if (rank == 0) {
        if (rc) printf("verdict: INVALID: %s\n", err->msg);
        else printf("verdict: valid kvtrace v1 (all %lld x %lld keys/values and %lld queries finite)\n",
                    (long long)in->S, (long long)in->n, (long long)in->m);
    }
    kv_trace_close(t);
    return rc;
}
