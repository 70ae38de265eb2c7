/* test_held.c - the evictors' held-rows attention (kernels/held.h):
 *   - its logits are kv_held_logit's bits: kv_held_logits over every d in
 *     1..70 and a few larger (tails of kv_dot_fixed's 8 lanes), any n, and
 *     the state's max after kv_attn_held over one token or one tile;
 *     kv_dot_fixed_rows is kv_dot_fixed's bits for blocks of 1..8 vectors;
 *   - its weights: with d = 1 (the logit is the key) and one-hot values
 *     (dv = n, value t = unit vector t), u[t] is token t's weight
 *     exp(a_t - m) as the kernel computed it: within 4 ulp of libm's exp
 *     for every a_t - m >= -708 (the vectorised exp is about 1 ulp), 0
 *     below, exactly 1 at the max;
 *   - its sums against a softmax written here in double (libm exp,
 *     sequential sums): m equal, l, l2 and the outputs u / l within a bound
 *     derived from double rounding (below), with keys ordered so that the
 *     running max rises at every tile (the rescales), over several d, dv
 *     (tails of the vectors) and n (short last tiles);
 *   - tiles: kv_held_fold tile by tile (the coded stores' path, slots.c)
 *     is kv_attn_held's bits; n = 0 gives empty states.
 * Bound on a sum of n weights e_t (1 + d_t): the kernel's weight is off by
 * its exp's 4 ulp and 1.5 ulp per later rescale (a libm exp factor and a
 * product; at most one per tile), its sum by T/8 + 3 (lanes, tree) plus
 * one per tile, the reference's by n and its exp's 1 ulp: relative to the
 * sum of |terms|, k eps with k = 6 + 3 tiles + T/8 + 3 + n, and an output
 * u / l by 2 k eps (sum e |v| + |u|) / l. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/held.h"
#include "kernels/partial.h"
#include "testutil.h"

static void fill(float *x, size_t n, kv_rng *r, double s)
{
    for (size_t i = 0; i < n; i++) x[i] = (float)(s * kv_rng_normal(r));
}

static void test_logits(void)
{
    kv_rng r;
    kv_rng_seed(&r, 1, 0, 0);
    enum { NQ = 3, N = 77 };
    int ds[] = { 128, 129, 135, 256 };
    int64_t bad = 0, checked = 0, badrows = 0;
    for (int di = 0; di < 70 + 4; di++) {
        int d = di < 70 ? di + 1 : ds[di - 70];
        float *Q = malloc(sizeof(float) * NQ * d), *K = malloc(sizeof(float) * N * d);
        double lg[NQ * N];
        fill(Q, (size_t)NQ * d, &r, 1.0);
        fill(K, (size_t)N * d, &r, 1.0);
        double scale = 1.0 / sqrt((double)d);
        for (int n = 1; n <= N; n += n < 10 ? 1 : 17) {
            kv_held_logits(Q, NQ, K, (size_t)n, d, scale, lg, N);
            for (int q = 0; q < NQ; q++)
                for (int t = 0; t < n; t++, checked++) {
                    double a = kv_held_logit(Q + q * d, K + (size_t)t * d, d, scale);
                    bad += memcmp(&a, &lg[q * N + t], sizeof a) != 0;
                }
        }
        /* kv_dot_fixed_rows: blocks of 1..8 vectors against NQ rows */
        for (int nt = 1; nt <= KV_DOT_BLK; nt++) {
            const float *x[KV_DOT_BLK];
            float out[KV_DOT_BLK * NQ];
            for (int t = 0; t < nt; t++) x[t] = K + (size_t)(3 * t) * d;
            kv_dot_fixed_rows(Q, NQ, d, x, nt, out);
            for (int t = 0; t < nt; t++)
                for (int j = 0; j < NQ; j++) {
                    float a = kv_dot_fixed(Q + j * d, x[t], d);
                    badrows += memcmp(&a, &out[t * NQ + j], sizeof a) != 0;
                }
        }
        /* the kernel's own: one token per call (m is its logit), then a tile (m its max) */
        double st[NQ * KV_PSTATE_LEN(1)];
        float V[N] = { 0 };
        for (int t = 0; t < N; t += 5) {
            kv_attn_held(Q, NQ, K + (size_t)t * d, V, 1, d, 1, scale, st);
            for (int q = 0; q < NQ; q++, checked++) {
                double a = kv_held_logit(Q + q * d, K + (size_t)t * d, d, scale);
                bad += memcmp(&a, &st[q * KV_PSTATE_LEN(1) + KV_PS_M], sizeof a) != 0;
            }
        }
        kv_attn_held(Q, NQ, K, V, KV_HELD_TILE, d, 1, scale, st);
        for (int q = 0; q < NQ; q++, checked++) {
            double m = -INFINITY;
            for (int t = 0; t < KV_HELD_TILE; t++) {
                double a = kv_held_logit(Q + q * d, K + (size_t)t * d, d, scale);
                m = a > m ? a : m;
            }
            bad += memcmp(&m, &st[q * KV_PSTATE_LEN(1) + KV_PS_M], sizeof m) != 0;
        }
        free(Q);
        free(K);
    }
    CHECK(bad == 0, "%lld of %lld logits differ from kv_held_logit", (long long)bad, (long long)checked);
    CHECK(badrows == 0, "%lld kv_dot_fixed_rows dots differ from kv_dot_fixed", (long long)badrows);
    printf("logits: %lld compared bitwise with kv_held_logit\n", (long long)checked);
}

/* ulps between two doubles of the same sign */
static double ulps(double a, double b)
{
    return fabs(a - b) / (nextafter(fabs(b), INFINITY) - fabs(b));
}

static void test_weights(void)
{
    enum { N = KV_HELD_TILE, REPS = 3000 };
    size_t sl = KV_PSTATE_LEN(N);
    float q = 1.0f, K[N], *V = calloc((size_t)N * N, sizeof(float));
    double *st = malloc(sizeof(double) * sl), worst = 0, worst_x = 0;
    for (int t = 0; t < N; t++) V[t * N + t] = 1.0f;
    kv_rng r;
    kv_rng_seed(&r, 2, 0, 0);
    int64_t count = 0, zero_bad = 0, one_bad = 0;
    for (int rep = 0; rep < REPS; rep++) {
        for (int t = 0; t < N; t++) {
            double u = kv_rng_uniform(&r);
            /* a spread of scales: [-720, 0] uniformly, or small, or near -708 */
            double x = rep % 3 == 0 ? -720.0 * u : rep % 3 == 1 ? -exp(-30.0 * u) : -707.0 - 2.0 * u;
            K[t] = (float)x;
        }
        K[rep % N] = 0.0f; /* the max: weight exactly 1 */
        kv_attn_held(&q, 1, K, V, N, 1, N, 1.0, st);
        CHECK(st[KV_PS_M] == 0.0, "max %.17g, not 0", st[KV_PS_M]);
        for (int t = 0; t < N; t++) {
            double x = (double)K[t], e = exp(x), w = st[KV_PS_U + t];
            if (x < -708.0) {
                zero_bad += w != 0.0;
                continue;
            }
            if (x == 0.0) one_bad += w != 1.0;
            double u = ulps(w, e);
            if (u > worst) {
                worst = u;
                worst_x = x;
            }
            count++;
        }
    }
    CHECK(worst <= 4.0, "weight off libm's exp by %.3g ulp at a - m = %.17g", worst, worst_x);
    CHECK(zero_bad == 0, "%lld weights below a - m = -708 are not 0", (long long)zero_bad);
    CHECK(one_bad == 0, "%lld weights of the max are not 1", (long long)one_bad);
    printf("weights: %lld in [-708, 0], worst %.3g ulp of libm's exp at %.6g\n", (long long)count, worst, worst_x);
    free(V);
    free(st);
}

/* The softmax of one query over n rows, in double: m, l, l2, u, and
 * A[c] = sum e |v_c| */
static void reference(const float *q, const float *K, const float *V, int n, int d, int dv, double scale, double *ref,
                      double *A)
{
    double m = -INFINITY;
    for (int t = 0; t < n; t++) {
        double a = kv_held_logit(q, K + (size_t)t * d, d, scale);
        m = a > m ? a : m;
    }
    kv_partial_clear(ref, dv);
    ref[KV_PS_M] = m;
    for (int c = 0; c < dv; c++) A[c] = 0;
    for (int t = 0; t < n; t++) {
        double e = exp(kv_held_logit(q, K + (size_t)t * d, d, scale) - m);
        ref[KV_PS_L] += e;
        ref[KV_PS_L2] += e * e;
        for (int c = 0; c < dv; c++) {
            ref[KV_PS_U + c] += e * V[(size_t)t * dv + c];
            A[c] += e * fabs((double)V[(size_t)t * dv + c]);
        }
    }
}

static void test_sums(void)
{
    int dims[][2] = { { 64, 64 }, { 40, 24 }, { 19, 13 }, { 128, 136 }, { 8, 1 } };
    int ns[] = { 1, 7, 64, 65, 300, 1000 };
    enum { NQ = 3 };
    kv_rng r;
    kv_rng_seed(&r, 3, 0, 0);
    double worst_rel = 0; /* worst error over its bound */
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
            int d = dims[di][0], dv = dims[di][1], n = ns[ni];
            size_t sl = KV_PSTATE_LEN(dv);
            float *Q = malloc(sizeof(float) * NQ * d), *K = malloc(sizeof(float) * (size_t)n * d),
                  *V = malloc(sizeof(float) * (size_t)n * dv);
            double *st = malloc(sizeof(double) * NQ * sl), *ref = malloc(sizeof(double) * sl),
                   *A = malloc(sizeof(double) * dv);
            fill(Q, (size_t)NQ * d, &r, 1.0);
            fill(V, (size_t)n * dv, &r, 1.0);
            /* keys along query 0, growing with t: its running max rises at every tile */
            for (int t = 0; t < n; t++)
                for (int c = 0; c < d; c++)
                    K[(size_t)t * d + c] = (float)(Q[c] * (0.5 + 6.0 * t / n) + 0.7 * kv_rng_normal(&r));
            double scale = 1.0 / sqrt((double)d);
            CHECK(kv_attn_held(Q, NQ, K, V, (size_t)n, d, dv, scale, st) == KV_OK, "kv_attn_held");
            int tiles = (n + KV_HELD_TILE - 1) / KV_HELD_TILE;
            double k = 6.0 + 3.0 * tiles + KV_HELD_TILE / 8 + 3.0 + n;
            for (int q = 0; q < NQ; q++) {
                const double *x = st + q * sl;
                reference(Q + q * d, K, V, n, d, dv, scale, ref, A);
                CHECK(x[KV_PS_M] == ref[KV_PS_M], "d=%d n=%d q=%d: m %.17g, reference %.17g", d, n, q, x[KV_PS_M],
                      ref[KV_PS_M]);
                double el = fabs(x[KV_PS_L] - ref[KV_PS_L]) / (k * DBL_EPSILON * ref[KV_PS_L]);
                double el2 = fabs(x[KV_PS_L2] - ref[KV_PS_L2]) / (k * DBL_EPSILON * ref[KV_PS_L2]);
                CHECK(el <= 1 && el2 <= 1, "d=%d n=%d q=%d: l off by %.3g, l2 by %.3g of the bound", d, n, q, el, el2);
                worst_rel = fmax(worst_rel, fmax(el, el2));
                for (int c = 0; c < dv; c++) {
                    double z = x[KV_PS_U + c] / x[KV_PS_L], zr = ref[KV_PS_U + c] / ref[KV_PS_L];
                    double b = 2 * k * DBL_EPSILON * (A[c] + fabs(ref[KV_PS_U + c])) / ref[KV_PS_L];
                    double e = fabs(z - zr) / b;
                    CHECK(e <= 1, "d=%d dv=%d n=%d q=%d c=%d: output %.17g, reference %.17g (%.3g of the bound)", d,
                          dv, n, q, c, z, zr, e);
                    worst_rel = fmax(worst_rel, e);
                }
            }
            /* tile by tile, as the coded stores fold: the same bits */
            double *st2 = malloc(sizeof(double) * NQ * sl);
            for (int q = 0; q < NQ; q++) kv_partial_clear(st2 + q * sl, dv);
            for (int a = 0; a < n; a += KV_HELD_TILE) {
                int nt = n - a < KV_HELD_TILE ? n - a : KV_HELD_TILE;
                kv_held_fold(Q, NQ, K + (size_t)a * d, V + (size_t)a * dv, nt, d, dv, scale, st2);
            }
            CHECK(!memcmp(st, st2, sizeof(double) * NQ * sl), "d=%d n=%d: kv_held_fold by tiles differs", d, n);
            free(st2);
            free(Q);
            free(K);
            free(V);
            free(st);
            free(ref);
            free(A);
        }
    /* no rows: empty states */
    double st[2 * KV_PSTATE_LEN(2)], e[KV_PSTATE_LEN(2)];
    float q[4] = { 1, 2, 3, 4 };
    memset(st, 0x55, sizeof st);
    kv_partial_clear(e, 2);
    CHECK(kv_attn_held(q, 2, NULL, NULL, 0, 2, 2, 1.0, st) == KV_OK, "n = 0");
    CHECK(!memcmp(st, e, sizeof e) && !memcmp(st + KV_PSTATE_LEN(2), e, sizeof e), "n = 0: states not empty");
    printf("sums: worst error %.3g of its bound\n", worst_rel);
}

int main(void)
{
    test_logits();
    test_weights();
    test_sums();
    return kv_test_result("test_held");
}
