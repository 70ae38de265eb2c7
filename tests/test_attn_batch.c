/* test_attn_batch.c - kv_attn_fold_multi, the multi-position (causal,
 * variable-length) kernel behind exact's partial_batch.
 *
 * On random data (d multiple of 16 or not, dv != d, prefixes 0..n with
 * repeats, nq 1..70, one- and many-slice n) every query's state must be:
 *   - bitwise that of kv_attn_fold_par over its own prefix with the same nq
 *     queries (same path and tiles; attn.h), checked on a subset of queries;
 *   - within float rounding of kv_attn_fold on its prefix, one query alone
 *     (the one-query path: different logit arithmetic).  Bound: each logit
 *     a' of either kernel is within e = gamma_d s sum_c |q_c k_c| + u |a| of
 *     the exact one (the topk_ref style, test_baselines.c), plus u |a - m|
 *     for the max shift; the vectorised exp is within 2e-7 relative; every
 *     tile sum of <= 64 float terms within gamma_64 relative of its exact
 *     value.  So each weight is within a factor exp(+-E) of its exact value
 *     with E = 2 max_t e_t + u max_t |a_t - m| + 2e-7, and each side's l and u
 *     within gamma_64 (of sum w and sum w |v_c|): for both kernels
 *     |z'_c - z_c| <= 2 (e^{2E} - 1 + 2 gamma_64) (sum_t w_t |v_tc|) / sum w,
 *     computed in double from the exact weights (1e-12 slack for the double
 *     folds);
 *   - bitwise the same with 1 and 2 OpenMP threads;
 *   - left as given (the identity) for a zero-length prefix;
 *   - with K and V rounded to half, bitwise the same from the _f16 kernels
 *     over the half arrays (exact's store=f16: same floats, same arithmetic). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "core/kverr.h"
#include "core/rng.h"
#include "kernels/attn.h"
#include "kernels/partial.h"
#include "methods/common/quant.h"
#include "testutil.h"

static void clear_all(double *st, int nq, int dv)
{
    for (int q = 0; q < nq; q++) kv_partial_clear(st + (size_t)q * KV_PSTATE_LEN(dv), dv);
}

/* the rounding bound above for query q over K, V[0 .. len) */
static void bound(const float *q, const float *K, const float *V, size_t len, int d, int dv, float scale, double *tol)
{
    const double u = 0x1p-24, g64 = 64 * u / (1 - 64 * u);
    double *a = malloc(sizeof(double) * len), m = -INFINITY;
    double emax = kv_test_logits(q, K, len, d, scale, a);
    for (size_t t = 0; t < len; t++) m = a[t] > m ? a[t] : m;
    double dm = 0;
    for (size_t t = 0; t < len; t++) dm = fabs(a[t] - m) > dm ? fabs(a[t] - m) : dm;
    double E = 2 * emax + u * dm + 2e-7, l = 0;
    for (int c = 0; c < dv; c++) tol[c] = 0;
    for (size_t t = 0; t < len; t++) {
        double w = exp(a[t] - m);
        l += w;
        for (int c = 0; c < dv; c++) tol[c] += w * fabs((double)V[t * dv + c]);
    }
    for (int c = 0; c < dv; c++) tol[c] = 2 * (expm1(2 * E) + 2 * g64) * tol[c] / l + 1e-12;
    free(a);
}

/* The _f16 kernels (keys and values held as half) against the float ones
 * on the same values (K, V rounded to half): bitwise, batched and one
 * prefix, on 2 threads and 1. */
static void half_case(const float *Q, int nq, const size_t *len, const float *K, const float *V, size_t n, int d,
                      int dv, float scale)
{
    size_t sl = KV_PSTATE_LEN(dv), nk = n * (size_t)d, nv = n * (size_t)dv;
    uint16_t *Kh = malloc(sizeof(uint16_t) * nk), *Vh = malloc(sizeof(uint16_t) * nv);
    float *Kr = malloc(sizeof(float) * nk), *Vr = malloc(sizeof(float) * nv);
    double *a = malloc(sizeof(double) * nq * sl), *b = malloc(sizeof(double) * nq * sl);
    for (size_t i = 0; i < nk; i++) Kr[i] = kv_half_to_float(Kh[i] = kv_half_from_float(K[i]));
    for (size_t i = 0; i < nv; i++) Vr[i] = kv_half_to_float(Vh[i] = kv_half_from_float(V[i]));
    for (int th = 1; th <= 2; th++)
        for (int multi = 0; multi <= 1; multi++) { /* kv_attn_fold_multi at len[], kv_attn_fold_par over n */
            omp_set_num_threads(th);
            clear_all(a, nq, dv);
            clear_all(b, nq, dv);
            int rc = multi ? (kv_attn_fold_multi(Q, nq, len, Kr, Vr, d, dv, scale, a),
                              kv_attn_fold_multi_f16(Q, nq, len, Kh, Vh, d, dv, scale, b))
                           : (kv_attn_fold_par(Q, nq, Kr, Vr, n, d, dv, scale, a),
                              kv_attn_fold_par_f16(Q, nq, Kh, Vh, n, d, dv, scale, b));
            CHECK(rc == KV_OK && memcmp(a, b, sizeof(double) * nq * sl) == 0,
                  "f16 %s not bitwise float: n %zu d %d dv %d nq %d threads %d", multi ? "multi" : "par", n, d, dv, nq, th);
        }
    omp_set_num_threads(2);
    free(Kh); free(Vh); free(Kr); free(Vr); free(a); free(b);
}

static void one_case(uint64_t seed, size_t n, int d, int dv, int nq, int with_zero)
{
    size_t sl = KV_PSTATE_LEN(dv);
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
    size_t *len = malloc(sizeof(size_t) * nq);
    double *st = malloc(sizeof(double) * nq * sl), *st1 = malloc(sizeof(double) * nq * sl);
    double *ref = malloc(sizeof(double) * nq * sl), *tol = malloc(sizeof(double) * dv);
    double z[4096], zr[4096];
    for (size_t i = 0; i < n * (size_t)d; i++) K[i] = (float)kv_hash_normal(seed, 1, i, 0);
    for (size_t i = 0; i < n * (size_t)dv; i++) V[i] = (float)kv_hash_normal(seed, 2, i, 0);
    for (size_t i = 0; i < (size_t)nq * d; i++) Q[i] = (float)(2.0 * kv_hash_normal(seed, 3, i, 0));
    kv_rng r;
    kv_rng_seed(&r, seed, 4, 0);
    for (int q = 0; q < nq; q++) len[q] = 1 + (size_t)kv_rng_below(&r, n);
    len[nq - 1] = n;
    if (nq > 3) len[kv_rng_below(&r, (uint64_t)nq - 1)] = 1; /* the shortest prefix */
    if (with_zero) len[0] = 0;
    for (int i = 1; i < nq; i++) /* insertion sort: non-decreasing */
        for (int j = i; j > 0 && len[j] < len[j - 1]; j--) { size_t t = len[j]; len[j] = len[j - 1]; len[j - 1] = t; }
    for (int q = 1; q + 1 < nq; q += 5) len[q] = len[q - 1]; /* repeats */
    float scale = 1.0f / sqrtf((float)d);

    omp_set_num_threads(2);
    clear_all(st, nq, dv);
    CHECK(kv_attn_fold_multi(Q, nq, len, K, V, d, dv, scale, st) == KV_OK, "n %zu d %d", n, d);
    omp_set_num_threads(1);
    clear_all(st1, nq, dv);
    CHECK(kv_attn_fold_multi(Q, nq, len, K, V, d, dv, scale, st1) == KV_OK, "n %zu d %d", n, d);
    omp_set_num_threads(2);
    CHECK(memcmp(st, st1, sizeof(double) * nq * sl) == 0, "1 vs 2 threads differ: n %zu d %d dv %d nq %d", n, d, dv, nq);

    int bit_bad = 0, tol_bad = 0;
    double worst = 0;
    for (int q = 0; q < nq; q++) {
        const double *s = st + (size_t)q * sl;
        if (len[q] == 0) {
            CHECK(s[KV_PS_M] == -INFINITY && s[KV_PS_L] == 0, "empty prefix changed the state");
            continue;
        }
        if (q % 7 == 0 || q == nq - 1) { /* bitwise: kv_attn_fold_par, the same nq queries at len[q] */
            clear_all(ref, nq, dv);
            kv_attn_fold_par(Q, nq, K, V, len[q], d, dv, scale, ref);
            if (memcmp(s, ref + (size_t)q * sl, sizeof(double) * sl)) bit_bad++;
        }
        double *r1 = ref; /* one query alone, the one-query path */
        kv_partial_clear(r1, dv);
        kv_attn_fold(Q + (size_t)q * d, 1, K, V, len[q], d, dv, scale, r1);
        kv_partial_output(s, dv, z);
        kv_partial_output(r1, dv, zr);
        bound(Q + (size_t)q * d, K, V, len[q], d, dv, scale, tol);
        for (int c = 0; c < dv; c++) {
            double e = fabs(z[c] - zr[c]);
            if (e > tol[c]) tol_bad++;
            if (e / tol[c] > worst) worst = e / tol[c];
        }
    }
    CHECK(bit_bad == 0, "%d queries not bitwise kv_attn_fold_par: n %zu d %d dv %d nq %d", bit_bad, n, d, dv, nq);
    CHECK(tol_bad == 0, "%d components over the rounding bound (worst %.3g of it): n %zu d %d dv %d nq %d", tol_bad,
          worst, n, d, dv, nq);
    printf("n %6zu d %3d dv %3d nq %2d: worst error %.3g of the bound\n", n, d, dv, nq, worst);
    half_case(Q, nq, len, K, V, n, d, dv, scale);
    free(K); free(V); free(Q); free(len); free(st); free(st1); free(ref); free(tol);
}

int main(void)
{
    /* (80, 144), (256, 80): the one-query path's blocks of 8, 4 and 1 vectors of dimensions */
    const int ds[][2] = { { 64, 64 }, { 16, 48 }, { 32, 20 }, { 24, 24 }, { 13, 7 }, { 128, 128 }, { 80, 144 }, { 256, 80 } };
    const int nqs[] = { 1, 2, 3, 4, 5, 17, 64, 70 };
    uint64_t seed = 1;
    for (int di = 0; di < (int)(sizeof ds / sizeof ds[0]); di++)
        for (int qi = 0; qi < 8; qi++) {
            size_t n = 100 + (size_t)(seed * 397) % 1900;
            one_case(seed++, n, ds[di][0], ds[di][1], nqs[qi], qi % 3 == 1);
        }
    /* many slices (n > 8192): the slice split and the merge in slice order */
    one_case(seed++, 20000, 16, 32, 12, 0);
    one_case(seed++, 17000, 32, 16, 3, 1);
    one_case(seed++, 9000, 13, 5, 70, 0);
    return kv_test_result("test_attn_batch");
}
