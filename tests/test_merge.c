/* test_merge.c - the partial-state merge and its MPI reduction.
 * Run under mpiexec with 1..4 ranks. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "mpi/merge.h"
#include "kernels/partial.h"
#include "core/rng.h"
#include "testutil.h"

#define DV 8

/* direct double reference: softmax over logits a with values V */
static void reference(const double *a, const float *V, int n, double *z)
{
    double m = -INFINITY, l = 0;
    for (int i = 0; i < n; i++) m = a[i] > m ? a[i] : m;
    memset(z, 0, sizeof(double) * DV);
    for (int i = 0; i < n; i++) {
        double e = exp(a[i] - m);
        l += e;
        for (int c = 0; c < DV; c++) z[c] += e * V[i * DV + c];
    }
    for (int c = 0; c < DV; c++) z[c] /= l;
}

static void serial_tests(void)
{
    size_t sl = KV_PSTATE_LEN(DV);
    double e[KV_PSTATE_LEN(DV)], x[KV_PSTATE_LEN(DV)], y[KV_PSTATE_LEN(DV)], z[DV], r[DV];
    float V[64 * DV], a32[64];
    double a[64];
    kv_rng g;
    kv_rng_seed(&g, 5, 0, 0);
    for (int i = 0; i < 64 * DV; i++) V[i] = (float)kv_rng_normal(&g);

    /* identity: merging the empty state changes nothing, either side */
    for (int i = 0; i < 64; i++) a32[i] = (float)(a[i] = 3 * kv_rng_normal(&g));
    kv_partial_clear(x, DV);
    kv_partial_add(x, DV, a32, NULL, V, 64);
    memcpy(y, x, sizeof x);
    kv_partial_clear(e, DV);
    kv_partial_merge(y, e, DV);
    CHECK(!memcmp(x, y, sizeof x), "x (+) empty != x");
    kv_partial_clear(y, DV);
    kv_partial_merge(y, x, DV);
    CHECK(!memcmp(x, y, sizeof x), "empty (+) x != x");
    kv_partial_clear(y, DV);
    kv_partial_merge(y, e, DV);
    CHECK(y[KV_PS_L] == 0 && y[KV_PS_M] == -INFINITY, "empty (+) empty not empty");
    CHECK(kv_partial_output(y, DV, z) == -1, "empty state must report no output");

    /* split anywhere (including empty halves) == whole */
    for (int i = 0; i < 64; i++) a32[i] = (float)(a[i] = (double)a32[i]);
    reference(a, V, 64, r);
    for (int cut = 0; cut <= 64; cut += 8) {
        kv_partial_clear(x, DV);
        kv_partial_clear(y, DV);
        kv_partial_add(x, DV, a32, NULL, V, (size_t)cut);
        kv_partial_add(y, DV, a32 + cut, NULL, V + cut * DV, (size_t)(64 - cut));
        kv_partial_merge(x, y, DV);
        kv_partial_output(x, DV, z);
        CHECK(kv_test_relerr(z, r, DV) < 1e-12, "cut %d: rel err %g", cut, kv_test_relerr(z, r, DV));
    }

    /* logits of magnitude 1e4: no overflow, dominated by the max token */
    for (int i = 0; i < 64; i++) a32[i] = (float)(a[i] = 1e4 + (i == 17 ? 50.0 : (double)(i % 7)));
    reference(a, V, 64, r);
    kv_partial_clear(x, DV);
    kv_partial_clear(y, DV);
    kv_partial_add(x, DV, a32, NULL, V, 30);
    kv_partial_add(y, DV, a32 + 30, NULL, V + 30 * DV, 34);
    kv_partial_merge(y, x, DV);
    CHECK(isfinite(y[KV_PS_L]) && isfinite(y[KV_PS_U]), "overflow at 1e4 logits");
    kv_partial_output(y, DV, z);
    CHECK(kv_test_relerr(z, r, DV) < 1e-6, "1e4 logits: rel err %g", kv_test_relerr(z, r, DV));
    for (int i = 0; i < 64; i++) a32[i] = (float)(a[i] = -1e4 - (double)(i % 5));
    reference(a, V, 64, r);
    kv_partial_clear(x, DV);
    kv_partial_add(x, DV, a32, NULL, V, 64);
    kv_partial_output(x, DV, z);
    CHECK(x[KV_PS_L] > 0 && kv_test_relerr(z, r, DV) < 1e-6, "-1e4 logits underflowed");

    /* the tiled kernel agrees with the double reference, n not a tile multiple */
    int n = 1000, d = 16;
    float *K = malloc(sizeof(float) * n * d), *V2 = malloc(sizeof(float) * n * DV), q[16];
    double *aa = malloc(sizeof(double) * n);
    for (int i = 0; i < n * d; i++) K[i] = (float)kv_rng_normal(&g);
    for (int i = 0; i < n * DV; i++) V2[i] = (float)kv_rng_normal(&g);
    for (int c = 0; c < d; c++) q[c] = (float)(4 * kv_rng_normal(&g));
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int c = 0; c < d; c++) s += (double)q[c] * K[i * d + c];
        aa[i] = 0.25 * s;
    }
    reference(aa, V2, n, r);
    kv_partial_clear(x, DV);
    kv_attn_fold(q, 1, K, V2, (size_t)n, d, DV, 0.25f, x);
    kv_partial_output(x, DV, z);
    CHECK(kv_test_relerr(z, r, DV) < 1e-5, "kernel rel err %g", kv_test_relerr(z, r, DV));
    /* the exp approximation used by the kernel */
    float xs[5] = { 0.0f, -1.0f, -10.5f, -80.0f, -100.0f };
    kv_expf_neg(xs, 5);
    CHECK(fabs(xs[0] - 1.0) < 1e-6 && fabs(xs[1] / exp(-1.0) - 1) < 1e-6 && fabs(xs[2] / exp(-10.5) - 1) < 1e-6 &&
          fabs(xs[3] / exp(-80.0) - 1) < 1e-5 && xs[4] == 0.0f, "expf_neg inaccurate");
    free(K); free(V2); free(aa);
    (void)sl;
}

/* Every rank contributes its chunk-cyclic share of n tokens for NQ queries,
 * including ranks with an empty share; the reduction must equal the serial
 * answer, and be bitwise reproducible. */
static void mpi_tests(void)
{
    int rank, P;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    enum { NQ = 5, N = 37 };
    size_t sl = KV_PSTATE_LEN(DV);
    float V[N * DV], a32[NQ][N];
    double a[NQ][N];
    kv_rng g;
    kv_rng_seed(&g, 9, 0, 0); /* same data on every rank */
    for (int i = 0; i < N * DV; i++) V[i] = (float)kv_rng_normal(&g);
    for (int q = 0; q < NQ; q++)
        for (int i = 0; i < N; i++)  /* query q has logits around +-1e4*q */
            { a32[q][i] = (float)((q % 2 ? -1.0 : 1.0) * 1e4 * q + 5 * kv_rng_normal(&g)); a[q][i] = a32[q][i]; }
    double send[NQ * KV_PSTATE_LEN(DV)], recv[NQ * KV_PSTATE_LEN(DV)], again[NQ * KV_PSTATE_LEN(DV)];
    for (int q = 0; q < NQ; q++) {
        kv_partial_clear(send + q * sl, DV);
        /* chunks of 4 tokens, cyclic; query 3 gets nothing from rank 0 (empty shard) */
        for (int c = rank; c * 4 < N; c += P) {
            if (q == 3 && rank == 0) continue;
            int cnt = N - c * 4 < 4 ? N - c * 4 : 4;
            kv_partial_add(send + q * sl, DV, a32[q] + c * 4, NULL, V + c * 4 * DV, (size_t)cnt);
        }
    }
    kv_merge mg;
    CHECK(kv_merge_init(&mg, DV) == MPI_SUCCESS, "merge init");
    CHECK(kv_merge_reduce(&mg, send, recv, NQ, 0, MPI_COMM_WORLD) == MPI_SUCCESS, "reduce 1");
    CHECK(kv_merge_reduce(&mg, send, again, NQ, 0, MPI_COMM_WORLD) == MPI_SUCCESS, "reduce 2");
    if (rank == 0) {
        CHECK(!memcmp(recv, again, sizeof recv), "reduction not bitwise reproducible");
        for (int q = 0; q < NQ; q++) {
            double z[DV], r[DV];
            int skip = (q == 3) ? 1 : 0; /* rank 0's chunks were left out of query 3 */
            double aq[N];
            float Vq[N * DV];
            int k = 0;
            for (int c = 0; c * 4 < N; c++) {
                if (skip && c % P == 0) continue;
                for (int i = c * 4; i < N && i < c * 4 + 4; i++, k++) {
                    aq[k] = a[q][i];
                    memcpy(Vq + k * DV, V + i * DV, sizeof(float) * DV);
                }
            }
            if (k == 0) { CHECK(recv[q * sl + KV_PS_L] == 0, "expected empty state"); continue; }
            reference(aq, Vq, k, r);
            kv_partial_output(recv + q * sl, DV, z);
            CHECK(kv_test_relerr(z, r, DV) < 1e-6, "P=%d query %d rel err %g", P, q, kv_test_relerr(z, r, DV));
        }
    }
    kv_merge_free(&mg);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    serial_tests();
    mpi_tests();
    int fails = kv_test_failures, all;
    MPI_Allreduce(&fails, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    kv_test_failures = all;
    int rc = rank == 0 ? kv_test_result("test_merge") : (all ? 1 : 0);
    MPI_Finalize();
    return rc;
}
