/* test_attn_pages.c - kv_attn_fold_pages, the float fold over a page list
 * (the paged holders: tokring, rowpool).
 *
 * Rows held in separately allocated pages of uneven sizes (empty, 1, 16,
 * 17 and random up to 40 rows: tiles of 64 span page boundaries, pages
 * straddle tiles), nq = 1, 3 (one query at a time), 4, 17 (queries in
 * lanes), d a multiple of 16 (vector paths) or not (scalar paths):
 *   - every query's answer z = u / l is within the float rounding bound of
 *     the softmax computed here in double, straight from the rows.  Bound:
 *     each float logit a' is within e_t = gamma_d s sum_c |q_c k_ct| + u |a_t|
 *     of a_t (the dot product in any order, then one product), the shift by
 *     the running max adds u |a - m|, the vectorised exp 1e-7 relative
 *     (attn.c, tests/test_expf.c), so each weight is exp(eta_t) times its
 *     exact value (up to a factor common to all) with |eta_t| <= E =
 *     max_t e_t + u max_t |a_t - m| + 1e-7, and every normalised weight
 *     within (e^{2E} - 1) of its own; the float tile sums (l and P.V, at most
 *     64 terms each, any order) add gamma_64 relative of the sum of
 *     absolute terms on each side of the ratio.  So
 *     |z'_c - z_c| <= 2 (e^{2E} - 1 + 2 gamma_64) sum_t p_t |v_tc| (p the exact
 *     softmax), plus 1e-12 for the double folds and merges;
 *   - the state is bitwise that of kv_attn_fold on the same rows in one
 *     contiguous block, and of kv_attn_fold_pages with that block as one
 *     page: the tiles see values, not where the rows live (attn.h);
 *   - pages all empty leave the state as given. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/kverr.h"
#include "core/rng.h"
#include "kernels/attn.h"
#include "kernels/partial.h"
#include "testutil.h"

/* the exact softmax output of query q over K, V[0 .. n) (double) and the
 * bound above, per value component */
static void reference(const float *q, const float *K, const float *V, size_t n, int d, int dv, float scale,
                      double *z, double *tol)
{
    const double u = 0x1p-24, g64 = 64 * u / (1 - 64 * u);
    double *a = malloc(sizeof(double) * n), m = -INFINITY, dm = 0, l = 0;
    double emax = kv_test_logits(q, K, n, d, scale, a); /* the kernel's logit error, testutil.h */
    for (size_t t = 0; t < n; t++) m = a[t] > m ? a[t] : m;
    for (size_t t = 0; t < n; t++) dm = fabs(a[t] - m) > dm ? fabs(a[t] - m) : dm;
    double E = emax + u * dm + 1e-7;
    for (int c = 0; c < dv; c++) z[c] = tol[c] = 0;
    for (size_t t = 0; t < n; t++) {
        double w = exp(a[t] - m);
        l += w;
        for (int c = 0; c < dv; c++) {
            z[c] += w * V[t * dv + c];
            tol[c] += w * fabs((double)V[t * dv + c]);
        }
    }
    for (int c = 0; c < dv; c++) {
        z[c] /= l;
        tol[c] = 2 * (expm1(2 * E) + 2 * g64) * tol[c] / l + 1e-12;
    }
    free(a);
}

static void clear_all(double *st, int nq, int dv)
{
    for (int q = 0; q < nq; q++) kv_partial_clear(st + (size_t)q * KV_PSTATE_LEN(dv), dv);
}

static void one_case(uint64_t seed, int npages, int d, int dv, int nq)
{
    kv_rng r;
    kv_rng_seed(&r, seed, 9, 0);
    size_t *pn = malloc(sizeof(size_t) * npages), n = 0;
    static const size_t fixed[] = { 1, 16, 17, 0, 16, 1, 17, 0 };
    for (int i = 0; i < npages; i++) {
        pn[i] = i < 8 ? fixed[i] : (size_t)kv_rng_below(&r, 41); /* 0 .. 40 */
        n += pn[i];
    }
    float *K = malloc(sizeof(float) * n * d), *V = malloc(sizeof(float) * n * dv), *Q = malloc(sizeof(float) * nq * d);
    for (size_t i = 0; i < n * (size_t)d; i++) K[i] = (float)kv_hash_normal(seed, 1, i, 0);
    for (size_t i = 0; i < n * (size_t)dv; i++) V[i] = (float)kv_hash_normal(seed, 2, i, 0);
    for (size_t i = 0; i < (size_t)nq * d; i++) Q[i] = (float)(2.0 * kv_hash_normal(seed, 3, i, 0));
    /* each page its own allocation, rows copied from the block */
    float **pk = malloc(sizeof(float *) * npages), **pv = malloc(sizeof(float *) * npages);
    for (int i = 0, t = 0; i < npages; t += (int)pn[i++]) {
        pk[i] = malloc(sizeof(float) * (pn[i] ? pn[i] : 1) * d);
        pv[i] = malloc(sizeof(float) * (pn[i] ? pn[i] : 1) * dv);
        memcpy(pk[i], K + (size_t)t * d, sizeof(float) * pn[i] * d);
        memcpy(pv[i], V + (size_t)t * dv, sizeof(float) * pn[i] * dv);
    }
    size_t sl = KV_PSTATE_LEN(dv);
    double *st = malloc(sizeof(double) * nq * sl), *ref = malloc(sizeof(double) * nq * sl);
    double *one = malloc(sizeof(double) * nq * sl);
    double *z = malloc(sizeof(double) * dv), *zr = malloc(sizeof(double) * dv), *tol = malloc(sizeof(double) * dv);
    float scale = 1.0f / sqrtf((float)d);

    clear_all(st, nq, dv);
    CHECK(kv_attn_fold_pages(Q, nq, (const float *const *)pk, (const float *const *)pv, pn, (size_t)npages, d, dv,
                             scale, st) == KV_OK, "fold_pages failed");
    clear_all(ref, nq, dv);
    CHECK(kv_attn_fold(Q, nq, K, V, n, d, dv, scale, ref) == KV_OK, "fold failed");
    const float *bk = K, *bv = V;
    clear_all(one, nq, dv);
    CHECK(kv_attn_fold_pages(Q, nq, &bk, &bv, &n, 1, d, dv, scale, one) == KV_OK, "fold_pages (one page) failed");
    CHECK(memcmp(st, ref, sizeof(double) * nq * sl) == 0,
          "pages not bitwise the contiguous kv_attn_fold: %d pages, n %zu d %d dv %d nq %d", npages, n, d, dv, nq);
    CHECK(memcmp(st, one, sizeof(double) * nq * sl) == 0,
          "pages not bitwise the same rows as one page: %d pages, n %zu d %d dv %d nq %d", npages, n, d, dv, nq);

    int bad = 0;
    double worst = 0;
    for (int q = 0; q < nq; q++) {
        kv_partial_output(st + (size_t)q * sl, dv, z);
        reference(Q + (size_t)q * d, K, V, n, d, dv, scale, zr, tol);
        for (int c = 0; c < dv; c++) {
            double e = fabs(z[c] - zr[c]);
            bad += e > tol[c];
            worst = e / tol[c] > worst ? e / tol[c] : worst;
        }
    }
    CHECK(bad == 0, "%d components over the rounding bound (worst %.3g of it): %d pages, n %zu d %d dv %d nq %d", bad,
          worst, npages, n, d, dv, nq);
    printf("%3d pages n %5zu d %3d dv %3d nq %2d: worst error %.3g of the bound\n", npages, n, d, dv, nq, worst);

    /* the empty pages alone: the identity */
    size_t zero[3] = { 0, 0, 0 };
    const float *ek[3] = { pk[0], pk[0], pk[0] }, *ev[3] = { pv[0], pv[0], pv[0] };
    memcpy(one, st, sizeof(double) * nq * sl);
    CHECK(kv_attn_fold_pages(Q, nq, ek, ev, zero, 3, d, dv, scale, st) == KV_OK &&
              memcmp(one, st, sizeof(double) * nq * sl) == 0,
          "empty pages changed the state");

    for (int i = 0; i < npages; i++) {
        free(pk[i]);
        free(pv[i]);
    }
    free(pk); free(pv); free(pn); free(K); free(V); free(Q);
    free(st); free(ref); free(one); free(z); free(zr); free(tol);
}

int main(void)
{
    /* (24, 20): the scalar logit and P.V loops; (80, 144): the one-query path's 4- and 1-vector blocks */
    const int ds[][2] = { { 64, 64 }, { 128, 128 }, { 24, 20 }, { 80, 144 }, { 16, 48 } };
    const int nqs[] = { 1, 3, 4, 17 };
    uint64_t seed = 1;
    for (int di = 0; di < (int)(sizeof ds / sizeof ds[0]); di++)
        for (int qi = 0; qi < 4; qi++) {
            one_case(seed, 8, ds[di][0], ds[di][1], nqs[qi]);            /* 68 rows: one tile and a bit */
            one_case(seed + 1, 40, ds[di][0], ds[di][1], nqs[qi]);       /* several tiles */
            seed += 2;
        }
    return kv_test_result("test_attn_pages");
}
