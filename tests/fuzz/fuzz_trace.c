/* fuzz_trace.c - libFuzzer target: the kvtrace validator.  The input bytes
 * become a file, which kv_trace_open must accept or reject with a message;
 * accepted traces are then read a little, as replay would. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "io/trace.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/kvstream-fuzz-%d.h5", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    kv_err err = { 0, "" };
    kv_trace *t = kv_trace_open(path, MPI_COMM_NULL, &err);
    if (!t) {
        if (err.code == KV_OK || err.msg[0] == '\0') abort(); /* rejected without a reason */
        return 0;
    }
    const kv_trace_info *in = kv_trace_get_info(t);
    int64_t cnt = in->n < 16 ? in->n : 16, qc = in->m < 16 ? in->m : 16;
    /* read only what is small: a fuzzed header may claim huge dimensions */
    if (in->S * cnt * (in->d + in->dv) <= (1 << 20) && in->S * qc * in->d <= (1 << 20)) {
        float *K = malloc(sizeof(float) * (size_t)(in->S * cnt * in->d));
        float *V = malloc(sizeof(float) * (size_t)(in->S * cnt * in->dv));
        float *Q = malloc(sizeof(float) * (size_t)(in->S * qc * in->d));
        if (K && V && Q) {
            kv_err e2 = { 0, "" };
            if (kv_trace_read_kv(t, 0, cnt, K, V, &e2) && e2.msg[0] == '\0') abort();
            kv_err e3 = { 0, "" };
            if (kv_trace_read_queries(t, 0, qc, Q, &e3) && e3.msg[0] == '\0') abort();
        }
        free(K);
        free(V);
        free(Q);
    }
    char buf[4096];
    kv_trace_describe(t, buf, sizeof buf);
    kv_trace_close(t);
    return 0;
}
