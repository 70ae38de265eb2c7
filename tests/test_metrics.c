/* test_metrics.c - kv_opnorm_from_gram (the |V_p|_op of the bound ratio)
 * against an independent reference: cyclic Jacobi rotations, which find
 * every eigenvalue of a symmetric matrix to rounding.
 *
 * Tolerance: both are backward stable on a symmetric matrix, so each
 * eigenvalue is within a few dv * eps * |G| of the true one; sqrt halves the
 * relative error.  We allow 64 dv eps relative on the top eigenvalue,
 * which for these matrices (condition of the top eigenvalue 1: symmetric)
 * is far below any error that would matter and far above rounding. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/metrics.h"
#include "testutil.h"

static double jacobi_top(const double *G0, int n)
{
    double *A = malloc(sizeof(double) * (size_t)n * n);
    memcpy(A, G0, sizeof(double) * (size_t)n * n);
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, tot = 0;
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) {
                tot += A[i * n + j] * A[i * n + j];
                if (i != j) off += A[i * n + j] * A[i * n + j];
            }
        if (off <= 1e-30 * tot) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = A[p * n + q];
                if (apq == 0) continue;
                double th = (A[q * n + q] - A[p * n + p]) / (2 * apq);
                double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1)), c = 1 / sqrt(t * t + 1), s = t * c;
                for (int k = 0; k < n; k++) { /* columns p, q */
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = c * akp - s * akq;
                    A[k * n + q] = s * akp + c * akq;
                }
                for (int k = 0; k < n; k++) { /* rows p, q */
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = c * apk - s * aqk;
                    A[q * n + k] = s * apk + c * aqk;
                }
            }
    }
    double top = A[0];
    for (int i = 1; i < n; i++) top = A[i * n + i] > top ? A[i * n + i] : top;
    free(A);
    return top;
}

static void check_one(const char *what, const double *G, int n, double *vec)
{
    double *work = malloc(sizeof(double) * KV_OPNORM_WORK(n));
    double got = kv_opnorm_from_gram(G, n, vec, work), ref = jacobi_top(G, n);
    double want = ref > 0 ? sqrt(ref) : 0, tol = 64.0 * n * DBL_EPSILON * (want > 0 ? want : 1);
    CHECK(fabs(got - want) <= tol, "%s (dv=%d): opnorm %.17g, Jacobi %.17g (diff %.3g > %.3g)", what, n, got, want,
          fabs(got - want), tol);
    free(work);
}

/* V^T V of p rows of noise: the top of its spectrum is nearly degenerate,
 * the case where power iteration crawls */
static void wishart(double *G, int n, int p, uint64_t seed)
{
    kv_rng r;
    kv_rng_seed(&r, seed, 0, 0);
    memset(G, 0, sizeof(double) * (size_t)n * n);
    double *v = malloc(sizeof(double) * (size_t)n);
    for (int t = 0; t < p; t++) {
        for (int i = 0; i < n; i++) v[i] = kv_rng_normal(&r);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) G[i * n + j] += v[i] * v[j];
    }
    free(v);
}

int main(void)
{
    const int dims[] = { 1, 2, 7, 8, 64, 128 };
    for (int di = 0; di < 6; di++) {
        int n = dims[di];
        double *G = calloc((size_t)n * n, sizeof(double)), *vec = calloc((size_t)n, sizeof(double));
        /* noise-like values, cold and warm start (the second call gets the first's Ritz vector) */
        wishart(G, n, 4 * n + 3, 7 + (uint64_t)n);
        check_one("wishart, cold", G, n, vec);
        check_one("wishart, warm", G, n, vec);
        wishart(G, n, 40 * n, 9 + (uint64_t)n);
        check_one("wishart p = 40 dv, warm from another matrix", G, n, vec);
        /* a diagonal with the top two 1e-9 apart, and a rank-one matrix */
        memset(G, 0, sizeof(double) * (size_t)n * n);
        for (int i = 0; i < n; i++) G[i * n + i] = 1.0 - 1e-9 * i;
        memset(vec, 0, sizeof(double) * (size_t)n);
        check_one("near-degenerate diagonal", G, n, vec);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) G[i * n + j] = (1.0 + i) * (1.0 + j);
        check_one("rank one", G, n, vec);
        memset(G, 0, sizeof(double) * (size_t)n * n);
        double *work = malloc(sizeof(double) * KV_OPNORM_WORK(n));
        CHECK(kv_opnorm_from_gram(G, n, vec, work) == 0.0, "zero matrix (dv=%d) has norm 0", n);
        free(work);
        free(G);
        free(vec);
    }
    return kv_test_result("test_metrics");
}
