/* test_turboquant.c - TurboQuant's codec (methods/tqcodec.h) and method.
 *
 * - the quantizer table: on random unit vectors in d = 128, the mean
 *   squared error per vector at 1..4 bits is within 3% of Max's Gaussian
 *   values 0.3634, 0.1175, 0.03454, 0.009497 and above the paper's lower
 *   bound 4^-b;
 * - the rotation is orthogonal to float rounding;
 * - decoding round trip: a vector whose rotated coordinates are centroids
 *   is encoded to exactly those codes (3 bits: codes straddle bytes) and
 *   decoded back; any coordinate goes to its nearest centroid;
 * - mode=prod: the inner-product estimate is unbiased over seeds (mean
 *   within 5 standard errors of <q, x>, the error estimated from the
 *   sample), at 1 bit (pure QJL: a missing sqrt(pi/2) would show) and 3;
 * - the method: partial_batch gives what partial gives prefix by prefix
 *   (the held set is a function of the prefix, float window included),
 *   residual >= n is exact attention, and the rotation does not depend on
 *   the rank. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/partial.h"
#include "methods/method.h"
#include "methods/common/tqcodec.h"
#include "testutil.h"

static void unit(kv_rng *r, float *x, int d)
{
    double nn = 0;
    for (int i = 0; i < d; i++) {
        x[i] = (float)kv_rng_normal(r);
        nn += (double)x[i] * x[i];
    }
    for (int i = 0; i < d; i++) x[i] = (float)(x[i] / sqrt(nn));
}

/* x~ = Pi^T yhat (the reconstruction in the original domain) */
static void reconstruct(const kv_tq_book *b, const float *R, const uint8_t *codes, float norm, float *yh, float *x)
{
    int d = b->d;
    kv_tq_decode(b, codes, norm, yh);
    for (int j = 0; j < d; j++) {
        double a = 0;
        for (int i = 0; i < d; i++) a += (double)R[(size_t)i * d + j] * yh[i];
        x[j] = (float)a;
    }
}

static void test_table(void)
{
    enum { D = 128, ROT = 4, VEC = 1000 };
    static const double max_table[4] = { 0.3634, 0.1175, 0.03454, 0.009497 };
    float *R = malloc(sizeof(float) * D * D), x[D], y[D], yh[D], xr[D];
    uint8_t codes[D];
    kv_rng r;
    kv_rng_seed(&r, 5, 6, 7);
    for (int b = 1; b <= 4; b++) {
        kv_tq_book book;
        CHECK(kv_tq_book_make(&book, D, b) == 0, "book");
        double sum = 0, sum2 = 0;
        for (int s = 0; s < ROT; s++) {
            CHECK(kv_tq_rotation(R, D, 100 + (uint64_t)s, 3) == 0, "rotation");
            for (int v = 0; v < VEC; v++) {
                unit(&r, x, D);
                memset(codes, 0, sizeof codes);
                float n = kv_tq_encode(&book, R, x, y, codes);
                reconstruct(&book, R, codes, n, yh, xr);
                double e = 0;
                for (int i = 0; i < D; i++) e += ((double)x[i] - xr[i]) * ((double)x[i] - xr[i]);
                sum += e;
                sum2 += e * e;
            }
        }
        int N = ROT * VEC;
        double mean = sum / N, se = sqrt((sum2 / N - mean * mean) / N);
        printf("turboquant d=%d bits=%d: MSE per vector %.5f (se %.5f; codebook's own %.5f; Max %.5f; bound %.5f)\n",
               D, b, mean, se, book.dist * D, max_table[b - 1], pow(4, -b));
        CHECK(fabs(mean - max_table[b - 1]) <= 0.03 * max_table[b - 1], "bits=%d: MSE %.5f not within 3%% of %.5f", b,
              mean, max_table[b - 1]);
        CHECK(mean >= pow(4, -b), "bits=%d: MSE %.5f below the lower bound 4^-b", b, mean);
        CHECK(fabs(book.dist * D - mean) <= 5 * se + 1e-4, "bits=%d: measured %.5f vs the density's %.5f", b, mean,
              book.dist * D);
    }
    /* orthogonality */
    double worst = 0;
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double a = 0;
            for (int k = 0; k < D; k++) a += (double)R[i * D + k] * R[j * D + k];
            worst = fmax(worst, fabs(a - (i == j)));
        }
    CHECK(worst < 1e-5, "R R^T differs from I by %.3g", worst);
    free(R);
}

static void test_roundtrip(void)
{
    kv_rng r;
    kv_rng_seed(&r, 1, 2, 3);
    for (int d = 1; d <= 67; d += 11)
        for (int b = 1; b <= 4; b++) {
            kv_tq_book book;
            kv_tq_book_make(&book, d, b);
            float *R = malloc(sizeof(float) * (size_t)d * d), *y = malloc(sizeof(float) * 4 * (size_t)d),
                  *yh = y + d, *x = yh + d;
            uint8_t *codes = calloc(1, kv_tq_code_bytes(b, (size_t)d) + 1), want[256];
            kv_tq_rotation(R, d, 9, (uint64_t)d);
            /* random centroids c */
            for (int i = 0; i < d; i++) want[i] = (uint8_t)kv_rng_below(&r, 1u << b);
            double nn = 0;
            for (int i = 0; i < d; i++) nn += (double)book.c[want[i]] * book.c[want[i]];
            if (nn == 0) want[0] = (uint8_t)((1 << b) - 1), nn = (double)book.c[want[0]] * book.c[want[0]];
            /* x = 3 Pi^T c / |c|: its rotated unit vector is c / |c|; encode must give the code of the cell each
             * coordinate of c / |c| falls in */
            for (int j = 0; j < d; j++) {
                double a = 0;
                for (int i = 0; i < d; i++) a += (double)R[(size_t)i * d + j] * book.c[want[i]];
                x[j] = (float)(3 * a / sqrt(nn));
            }
            float n = kv_tq_encode(&book, R, x, y, codes);
            CHECK(fabs(n - 3) < 1e-5, "d=%d b=%d: norm %g", d, b, n);
            kv_tq_decode(&book, codes, 1.0f, yh);
            int bad = 0;
            for (int i = 0; i < d; i++) { /* the decoded value is the nearest centroid of y_i */
                float best = INFINITY;
                for (int k = 0; k < (1 << b); k++) best = fminf(best, fabsf(y[i] - book.c[k]));
                bad += fabsf(y[i] - yh[i]) > best + 1e-6f;
            }
            CHECK(!bad, "d=%d b=%d: %d coordinates not at their nearest centroid", d, b, bad);
            /* y is Pi x / |x|: rotating back gives x */
            double ex = 0;
            for (int j = 0; j < d; j++) {
                double t = 0;
                for (int i = 0; i < d; i++) t += (double)R[(size_t)i * d + j] * y[i];
                ex = fmax(ex, fabs(3 * t - x[j]));
            }
            CHECK(ex <= 1e-5 * 3 * sqrt(d), "d=%d b=%d: Pi^T y |x| differs from x by %g", d, b, ex);
            free(R);
            free(y);
            free(codes);
        }
}

/* prod: <q, x~> over seeds for a fixed unit x and q */
static void test_prod(int bits)
{
    enum { D = 64, T = 3000 };
    float x[D], q[D], y[D], r[D], qr[D], *R = malloc(sizeof(float) * D * D), *S = malloc(sizeof(float) * D * D);
    kv_rng g;
    kv_rng_seed(&g, 3, 1, 4);
    unit(&g, x, D);
    for (int i = 0; i < D; i++) q[i] = (float)(0.8 * x[i] * sqrt(D) + kv_rng_normal(&g));
    double qx = 0, qq = 0;
    for (int i = 0; i < D; i++) qx += (double)q[i] * x[i], qq += (double)q[i] * q[i];
    kv_tq_book book;
    kv_tq_book_make(&book, D, bits - 1);
    double sum = 0, sum2 = 0, nofac = 0;
    const double coef = sqrt(M_PI / 2) / D;
    for (int t = 0; t < T; t++) {
        uint8_t codes[D], signs[D / 8];
        memset(codes, 0, sizeof codes);
        memset(signs, 0, sizeof signs);
        kv_tq_rotation(R, D, 1000 + (uint64_t)t, 0);
        kv_tq_gaussian(S, D, 1000 + (uint64_t)t, 0);
        float n = kv_tq_encode(&book, R, x, y, codes), gam = kv_tq_residual(&book, S, y, codes, r, signs);
        float yh[D], z[D];
        kv_tq_decode(&book, codes, n, yh);
        kv_tq_signs(signs, D, 1.0f, z);
        for (int i = 0; i < D; i++) {
            double a = 0;
            for (int j = 0; j < D; j++) a += (double)R[i * D + j] * q[j];
            qr[i] = (float)a;
        }
        double mse = 0, qj = 0;
        for (int i = 0; i < D; i++) {
            double a = 0;
            for (int j = 0; j < D; j++) a += (double)S[i * D + j] * qr[j];
            mse += (double)qr[i] * yh[i];
            qj += a * z[i];
        }
        double e = mse + coef * gam * n * qj;
        sum += e;
        sum2 += e * e;
        nofac += mse + coef / sqrt(M_PI / 2) * gam * n * qj;
    }
    double mean = sum / T, var = sum2 / T - mean * mean, se = sqrt(var / T);
    printf("turboquant prod bits=%d: <q,x> %.5f, mean estimate %.5f (se %.5f), sd %.4f\n", bits, qx, mean, se,
           sqrt(var));
    CHECK(fabs(mean - qx) <= 5 * se + 1e-5 * sqrt(qq), "prod bits=%d: mean %.5f vs <q,x> %.5f (5 se %.5f)", bits, mean,
          qx, 5 * se);
    if (bits == 1)
        CHECK(fabs(nofac / T - qx) > 5 * se, "the test cannot tell a missing sqrt(pi/2) (mean %.4f)", nofac / T);
    free(R);
    free(S);
}

/* ---- the method through its ops ---- */
typedef struct { const kv_method_ops *ops; void *st; kv_spec *sp; } inst;

static void *make(inst *m, const char *spec, int d, int dv, int64_t n, int rank, int P)
{
    kv_method_ctx c;
    memset(&c, 0, sizeof c);
    c.d = d, c.dv = dv, c.scale = 1 / sqrt(d), c.n_total = n, c.rank = rank, c.nranks = P, c.seed = 42;
    c.stream = 1;
    int cnt = 0;
    kv_err err;
    kv_err_clear(&err);
    m->ops = kv_method_find("turboquant");
    m->st = NULL;
    if (!m->ops || kv_spec_parse_list(spec, &m->sp, &cnt, &err) || m->ops->create(&m->sp[0], &c, &m->st, &err))
        CHECK(0, "%s: %s", spec, err.msg);
    return m->st;
}

static void drop(inst *m)
{
    if (m->st) m->ops->free(m->st);
    free(m->sp);
}

static void test_method(void)
{
    enum { D = 24, DV = 20, N = 600, NQ = 12 };
    float *K = malloc(sizeof(float) * N * D), *V = malloc(sizeof(float) * N * DV), Q[NQ * D];
    kv_rng r;
    kv_rng_seed(&r, 8, 8, 8);
    for (int i = 0; i < N * D; i++) K[i] = (float)kv_rng_normal(&r);
    for (int i = 0; i < N * DV; i++) V[i] = (float)(0.5 + kv_rng_normal(&r));
    for (int i = 0; i < NQ * D; i++) Q[i] = (float)(2 * kv_rng_normal(&r));
    int64_t p[NQ];
    for (int q = 0; q < NQ; q++) p[q] = 40 + 45 * q + (q % 3) * 7;
    size_t sl = KV_PSTATE_LEN(DV);
    double *a = malloc(sizeof(double) * sl * NQ), *b = malloc(sizeof(double) * sl * NQ);
    const char *specs[] = { "turboquant:bits=3", "turboquant:bits=2,mode=prod,residual=30", "turboquant:bits=4,residual=100",
                            "turboquant:bits=1,mode=prod" };
    kv_err err;
    kv_err_clear(&err);
    for (int si = 0; si < 4; si++) {
        inst x, y;
        make(&x, specs[si], D, DV, N, 0, 1);
        make(&y, specs[si], D, DV, N, 0, 1);
        if (!x.st || !y.st) continue;
        /* x: horizon, ingest and partial prefix by prefix; y: the walk, then one partial_batch */
        int64_t at = 0;
        for (int q = 0; q < NQ; q++) {
            x.ops->horizon(x.st, p[q]);
            y.ops->horizon(y.st, p[q]);
            x.ops->ingest(x.st, K + at * D, V + at * DV, at, (size_t)(p[q] - at), &err);
            y.ops->ingest(y.st, K + at * D, V + at * DV, at, (size_t)(p[q] - at), &err);
            at = p[q];
            CHECK(x.ops->partial(x.st, Q + q * D, 1, p[q], a + q * sl) == KV_OK, "partial");
        }
        CHECK(y.ops->partial_batch(y.st, Q, p, NQ, b) == KV_OK, "partial_batch");
        double worst = 0;
        for (int q = 0; q < NQ; q++) {
            double za[DV], zb[DV];
            kv_partial_output(a + q * sl, DV, za);
            kv_partial_output(b + q * sl, DV, zb);
            for (int c = 0; c < DV; c++) worst = fmax(worst, fabs(za[c] - zb[c]));
        }
        CHECK(worst <= 1e-5, "%s: partial_batch differs from partial by %.3g", specs[si], worst);
        drop(&x);
        drop(&y);
    }
    /* residual >= n: exact attention */
    inst e;
    make(&e, "turboquant:bits=1,residual=100000", D, DV, N, 0, 1);
    if (e.st) {
        e.ops->ingest(e.st, K, V, 0, N, &err);
        double st[KV_PSTATE_LEN(DV)], z[DV], ex[DV] = { 0 }, m = -INFINITY, l = 0;
        e.ops->partial(e.st, Q, 1, N, st);
        kv_partial_output(st, DV, z);
        for (int t = 0; t < N; t++) {
            double s = 0;
            for (int i = 0; i < D; i++) s += (double)Q[i] * K[t * D + i];
            m = fmax(m, s / sqrt(D));
        }
        for (int t = 0; t < N; t++) {
            double s = 0;
            for (int i = 0; i < D; i++) s += (double)Q[i] * K[t * D + i];
            double w = exp(s / sqrt(D) - m);
            l += w;
            for (int c = 0; c < DV; c++) ex[c] += w * V[t * DV + c];
        }
        double worst = 0;
        for (int c = 0; c < DV; c++) worst = fmax(worst, fabs(z[c] - ex[c] / l));
        CHECK(worst <= 1e-5, "residual >= n is not exact: off by %.3g", worst);
        drop(&e);
    }
    /* the same tokens on rank 2 of 3 give the same answer as on rank 0 of 1 (the rotation ignores the rank) */
    inst u, w;
    make(&u, "turboquant:bits=2", D, DV, N, 0, 1);
    make(&w, "turboquant:bits=2", D, DV, N, 2, 3);
    if (u.st && w.st) {
        double su[KV_PSTATE_LEN(DV)], sw[KV_PSTATE_LEN(DV)];
        u.ops->ingest(u.st, K, V, 0, 100, &err);
        w.ops->ingest(w.st, K, V, 0, 100, &err);
        u.ops->partial(u.st, Q, 1, 100, su);
        w.ops->partial(w.st, Q, 1, 100, sw);
        CHECK(!memcmp(su, sw, sizeof su), "the answer depends on the rank");
        /* the cost hook: 100 rows of 8 + 2 (24 + 20) / 8 bytes decoded, folded by one query */
        kv_query_cost c;
        u.ops->cost(u.st, &c);
        CHECK(c.read_tokens == 100 && c.read_bytes >= 100 * 19.0 && c.flops >= 100 * 2.0 * (D + DV),
              "cost: %g tokens, %g bytes, %g flops", c.read_tokens, c.read_bytes, c.flops);
    }
    drop(&u);
    drop(&w);
    CHECK(!err.code, "%s", err.msg);
    free(K);
    free(V);
    free(a);
    free(b);
}

int main(void)
{
    test_table();
    test_roundtrip();
    test_prod(1);
    test_prod(3);
    test_method();
    return kv_test_result("test_turboquant");
}
