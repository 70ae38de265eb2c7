/* test_qjl_kern.c - QJL's own kernels (kernels/qjl_kern.h) against plain
 * references.
 *
 *   - the sketch: every kv_qjl_dots output bitwise kv_dot_fixed(S_j, x_t)
 *     (so every sign bit is the fixed-order dot's), for d a multiple of 8
 *     (AVX-512's row-pair layout, a last block of 8 rows) and not (the
 *     lane layout), m from 8 to 176, 1 to 9 keys at once, signed zeros and
 *     ties among the inputs;
 *   - the norms: bitwise the double chain in x order, rounded to float;
 *   - the bit planes: put then get gives each token's packed codes back,
 *     for tokens at every position of a 16-token block;
 *   - the fold (kv_qjl_fold_planes) against the same sums in double from
 *     the weights it returns: each channel's float sum has a term a_t =
 *     w_t s_tg (one rounding) meet at most nt + 3 further roundings (3 in
 *     its quad's table, one per later quad, the p0 + 2 p1 + Z adds), and
 *     the zero-point sum Z (products rounded, KV_QVL lane sums, then the
 *     lanes) at most nt + KV_QVL + 1, so
 *       |u_c - u_ref| <= gamma(nt + KV_QVL + 8) (sum_t a_t (b0 + 2 b1) +
 *                        sum_t w_t |z_tg|),
 *     gamma(n) = n u / (1 - n u), u = 2^-24; for nt = 1 .. 128 (a part last
 *     block), dv 16 .. 128, value groups of 16 .. dv.  The largest error
 *     seen over the bound is printed;
 *   - the direct quantiser (kv_qjl_quant_planes): the zero points, scales
 *     and codes of kv_quantise bit for bit on Gaussian, shifted, constant,
 *     tiny (subnormal half) and wide groups, a short last group; a group
 *     beyond half refused (-1) as kv_quantise does; one holding a zero or
 *     a NaN handed back (1). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "kernels/qattn.h"
#include "kernels/qjl_kern.h"
#include "methods/common/quant.h"
#include "methods/qjl_quant.h"
#include "testutil.h"

static float rnd(uint64_t a, uint64_t b, uint64_t c) { return (float)kv_hash_normal(a, b, c, 0); }

static void test_dots(void)
{
    static const int ds[] = { 8, 36, 64, 72, 128, 100 }, ms[] = { 8, 24, 176, 16 };
    int bad = 0;
    for (size_t di = 0; di < sizeof ds / sizeof *ds; di++)
        for (size_t mi = 0; mi < sizeof ms / sizeof *ms; mi++) {
            int d = ds[di], m = ms[mi], NT = 9;
            float *S = malloc(sizeof(float) * (size_t)m * d), *ST = malloc(sizeof(float) * (size_t)m * d),
                  *X = malloc(sizeof(float) * (size_t)NT * d), *out = malloc(sizeof(float) * (size_t)NT * m);
            for (int i = 0; i < m * d; i++) S[i] = rnd(7, (uint64_t)d, (uint64_t)i);
            for (int i = 0; i < NT * d; i++) X[i] = i % 11 == 3 ? -0.0f : i % 13 == 5 ? 1.0f : rnd(8, (uint64_t)d, (uint64_t)i);
            for (int j = 0; j < m; j++) kv_qjl_row_put(ST, m, d, j, S + (size_t)j * d);
            for (int nt = 1; nt <= NT; nt++) {
                const float *x[9];
                for (int t = 0; t < nt; t++) x[t] = X + (size_t)t * d;
                kv_qjl_dots(ST, m, d, x, nt, out);
                for (int t = 0; t < nt; t++)
                    for (int j = 0; j < m; j++) {
                        float r = kv_dot_fixed(S + (size_t)j * d, x[t], d);
                        bad += memcmp(&r, &out[(size_t)t * m + j], sizeof r) != 0;
                    }
            }
            float nk[9];
            const float *x[9];
            for (int t = 0; t < NT; t++) x[t] = X + (size_t)t * d;
            kv_qjl_norms(x, NT, d, nk);
            for (int t = 0; t < NT; t++) {
                double nn = 0;
                for (int c = 0; c < d; c++) nn += (double)x[t][c] * x[t][c];
                bad += (float)sqrt(nn) != nk[t];
            }
            free(S); free(ST); free(X); free(out);
        }
    CHECK(bad == 0, "%d sketch dots or norms differ from kv_dot_fixed / the double chain", bad);
}

/* n tokens' packed 2-bit codes (dv / 4 bytes each), put and read back */
static void test_planes(int dv, int n, uint8_t *packed, uint8_t *vq)
{
    uint8_t row[256];
    int bad = 0;
    for (int i = 0; i < n * dv / 4; i++) packed[i] = (uint8_t)kv_hash4(3, (uint64_t)dv, (uint64_t)i, 0);
    for (int t = 0; t < n; t++) kv_qjl_planes_put(packed + (size_t)t * dv / 4, dv, vq, t);
    for (int t = 0; t < n; t++) {
        kv_qjl_planes_get(vq, dv, t, row);
        bad += memcmp(row, packed + (size_t)t * dv / 4, (size_t)dv / 4) != 0;
    }
    CHECK(bad == 0, "dv %d: %d tokens' codes not read back from the planes", dv, bad);
}

static double gam(int n) { double u = ldexp(1, -24); return n * u / (1 - n * u); }

/* one tile of nt tokens, dv channels, groups of gv: the worst error / bound */
static double fold_case(int nt, int dv, int gv, uint8_t *packed, uint8_t *vq)
{
    int nvg = (dv + gv - 1) / gv;
    float s[KV_QTILE + KV_QVL], vz[KV_QTILE * 64 + KV_QVL], vs[KV_QTILE * 64 + KV_QVL];
    float *scratch = malloc(sizeof(float) * (KV_QTILE * (size_t)dv + 64));
    double r[KV_PSTATE_LEN(128)];
    for (int t = 0; t < nt + KV_QVL; t++) s[t] = 4 * rnd(11, (uint64_t)nt, (uint64_t)t);
    for (int e = 0; e < nt * nvg + KV_QVL; e++) {
        vz[e] = 3 * rnd(12, (uint64_t)dv, (uint64_t)e);
        vs[e] = fabsf(rnd(13, (uint64_t)gv, (uint64_t)e));
    }
    for (int i = 0; i < nt * dv / 4; i++) packed[i] = (uint8_t)kv_hash4(5, (uint64_t)nt, (uint64_t)i, 0);
    for (int t = 0; t < nt; t++) kv_qjl_planes_put(packed + (size_t)t * dv / 4, dv, vq, t);
    kv_partial_clear(r, dv);
    kv_qjl_fold_planes(r, s, nt, dv, gv, vq, vz, vs, scratch);
    double worst = 0;
    for (int c = 0; c < dv; c++) {
        double ref = 0, mag = 0;
        for (int t = 0; t < nt; t++) {
            int g = c / gv, code = packed[(size_t)t * dv / 4 + c / 4] >> (2 * (c % 4)) & 3;
            double a = (double)s[t] * vs[t * nvg + g];
            ref += a * code + (double)s[t] * vz[t * nvg + g];
            mag += a * code + fabs((double)s[t] * vz[t * nvg + g]);
        }
        double e = fabs(r[KV_PS_U + c] - ref) / (gam(nt + KV_QVL + 8) * mag + 1e-300);
        worst = e > worst ? e : worst;
    }
    free(scratch);
    return worst;
}

static void test_fold(void)
{
    uint8_t *packed = malloc(KV_QTILE * 32), *vq = malloc(KV_QTILE * 32);
    static const int dvs[] = { 16, 48, 64, 128 }, nts[] = { 1, 5, 16, 17, 64, 100, 128 };
    double worst = 0;
    for (int k = 0; k < 4; k++) test_planes(dvs[k], 37, packed, vq);
    for (int k = 0; k < 4; k++)
        for (int gv = 16; gv <= dvs[k]; gv *= 2) { /* 48: a short last group of 16 at gv 32 */
            for (int i = 0; i < 7; i++) {
                double e = fold_case(nts[i], dvs[k], gv, packed, vq);
                CHECK(e <= 1, "fold dv %d gv %d nt %d: error %.3g x the bound", dvs[k], gv, nts[i], e);
                worst = e > worst ? e : worst;
            }
        }
    printf("fold: worst error %.3g of the bound\n", worst);
    free(packed);
    free(vq);
}

/* one token of dv values in groups of gv against kv_quantise; returns what the direct one did */
static int quant_case(const float *v, int dv, int gv)
{
    uint16_t bits[128], zs[2 * 64], rz[2 * 64];
    uint8_t packed[256] = { 0 };
    int r = kv_qjl_quant_planes(v, dv, gv, bits, zs), ref = 0;
    for (int g = 0; g * gv < dv; g++) {
        int nc = dv - g * gv < gv ? dv - g * gv : gv;
        ref |= kv_quantise(v + g * gv, (size_t)nc, 1, 2, packed, (size_t)(g * gv), 1, rz + 2 * g);
    }
    if (r == 1) return r;
    CHECK(r == ref, "dv %d gv %d: direct %d, kv_quantise %d", dv, gv, r, ref);
    if (r || ref) return r;
    int bad = 0;
    for (int g = 0; g * gv < dv; g++) bad += zs[2 * g] != rz[2 * g] || zs[2 * g + 1] != rz[2 * g + 1];
    for (int c = 0; c < dv; c++) {
        int code = packed[c / 4] >> (2 * (c % 4)) & 3, mine = (bits[2 * (c / 16)] >> (c % 16) & 1) |
                                                              (bits[2 * (c / 16) + 1] >> (c % 16) & 1) << 1;
        bad += code != mine;
    }
    CHECK(bad == 0, "dv %d gv %d: %d codes or parameters differ from kv_quantise", dv, gv, bad);
    return r;
}

static void test_quant(void)
{
    float v[128];
    int taken = 0, cases = 0;
    for (int k = 0; k < 400; k++) {
        int dv = k % 3 == 0 ? 64 : k % 3 == 1 ? 48 : 128, gv = k % 4 == 0 ? 16 : 32, kind = k % 8;
        for (int c = 0; c < dv; c++) {
            float x = rnd(21, (uint64_t)k, (uint64_t)c);
            v[c] = kind == 1 ? x + 100 : kind == 2 ? 0.75f : kind == 3 ? x * 1e-7f : kind == 4 ? x * 3e4f : x;
        }
        if (kind == 5) v[7] = -0.0f;
        if (kind == 6) v[dv - 1] = NAN;
        if (kind == 7) v[3] = 1e6f;
        int r = quant_case(v, dv, gv);
        taken += r == 0;
        cases++;
        if (kind == 5 || kind == 6) CHECK(r == 1, "a zero or NaN taken (%d)", r);
        if (kind == 7) CHECK(r != 0, "beyond half taken (%d)", r); /* -1, or 1 without AVX-512 */
    }
    printf("quantiser: %d of %d tokens taken directly\n", taken, cases);
}

int main(void)
{
    test_dots();
    test_quant();
    test_fold();
    return kv_test_result("test_qjl_kern");
}
