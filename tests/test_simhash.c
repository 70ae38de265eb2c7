/* test_simhash.c - SimHash codes (kernels/simhash.h): every bit of every
 * code is the sign of kv_dot_fixed(h, x, d) (bit set when >= 0), so the
 * blocked kernel's dots are kv_dot_fixed's bits; over d in 1..70 and a few
 * larger (kv_dot_fixed's tails), K in 1..24 (codes across 64-bit words),
 * L K not a multiple of the 16-plane blocks, any number of vectors (short
 * tiles), and vectors with exact zeros and a zero vector (every dot 0:
 * the >= 0 edge, every bit set); and many vectors (the AMX kernel's
 * groups of 32, where built) with dots near 0, norms out of its range,
 * subnormal elements. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/simhash.h"
#include "testutil.h"

/* The codes of the nt vectors X under the L K planes H: every bit the sign
 * of kv_dot_fixed (set when >= 0), and no bit above K. */
static void check_codes(const float *H, const float *X, int d, int L, int K, int nt, int64_t *bad, int64_t *checked)
{
    int np = L * K;
    float *P = malloc(sizeof(float) * kv_simhash_len(np, d));
    uint32_t *codes = malloc(sizeof(uint32_t) * (size_t)nt * L);
    kv_simhash_pack(H, np, d, P);
    CHECK(kv_simhash_codes(P, L, K, d, X, (size_t)nt, codes) == 0, "kv_simhash_codes");
    for (int t = 0; t < nt; t++)
        for (int l = 0; l < L; l++)
            for (int b = 0; b < K; b++) {
                float dot = kv_dot_fixed(H + (size_t)(l * K + b) * d, X + (size_t)t * d, d);
                *bad += ((codes[t * L + l] >> b) & 1) != (uint32_t)(dot >= 0.0f);
                ++*checked;
            }
    for (int t = 0; t < nt; t++) /* no bit above K */
        for (int l = 0; l < L; l++) *bad += K < 32 && (codes[t * L + l] >> K) != 0;
    free(P);
    free(codes);
}

static void one(int d, int L, int K, int nt, kv_rng *r, int64_t *bad, int64_t *checked)
{
    int np = L * K;
    float *H = malloc(sizeof(float) * (size_t)np * d), *X = malloc(sizeof(float) * (size_t)nt * d);
    for (int i = 0; i < np * d; i++) H[i] = (float)kv_rng_normal(r);
    for (int i = 0; i < nt * d; i++) X[i] = i % 5 == 0 ? 0.0f : (float)kv_rng_normal(r);
    if (nt > 2)
        for (int c = 0; c < d; c++) X[2 * d + c] = 0.0f; /* vector 2 is zero: every dot 0, every bit set */
    check_codes(H, X, d, L, K, nt, bad, checked);
    free(H);
    free(X);
}

/* many vectors (the AMX kernel's groups of 32, where built), some made
 * hard: nearly orthogonal to a plane (its dot near 0: the approximate
 * dot inside its bound, so recomputed), norms outside the kernel's range
 * (2^-45, 2^45: every bit recomputed), zero, or with subnormal elements */
static void hard(int d, int L, int K, int nt, kv_rng *r, int64_t *bad, int64_t *checked)
{
    int np = L * K;
    float *H = malloc(sizeof(float) * (size_t)np * d), *X = malloc(sizeof(float) * (size_t)nt * d);
    for (int i = 0; i < np * d; i++) H[i] = (float)kv_rng_normal(r);
    for (int t = 0; t < nt; t++) {
        float *x = X + (size_t)t * d;
        const float *h = H + (size_t)(t % np) * d;
        double hx = 0, hh = 0;
        for (int c = 0; c < d; c++) x[c] = (float)kv_rng_normal(r);
        for (int c = 0; c < d; c++) hx += (double)h[c] * x[c], hh += (double)h[c] * h[c];
        for (int c = 0; c < d; c++) {
            switch (t % 6) {
            case 1: x[c] = (float)(x[c] - hx / hh * h[c]); break; /* dot ~ 0 */
            case 2: x[c] *= 0x1p-45f; break;
            case 3: x[c] *= 0x1p45f; break;
            case 4: x[c] = 0.0f; break;
            case 5: if (c % 2) x[c] *= 0x1p-130f; break;
            default: break;
            }
        }
    }
    check_codes(H, X, d, L, K, nt, bad, checked);
    free(H);
    free(X);
}

int main(void)
{
    kv_rng r;
    kv_rng_seed(&r, 5, 0, 0);
    int64_t bad = 0, checked = 0;
    int ds[] = { 128, 129, 135 };
    for (int di = 0; di < 73; di++) one(di < 70 ? di + 1 : ds[di - 70], 3 + di % 5, 1 + di % 24, 1 + di % 11, &r, &bad, &checked);
    for (int K = 1; K <= 24; K++) one(64, 7, K, 5, &r, &bad, &checked);
    one(64, 150, 10, 8, &r, &bad, &checked); /* lsh's defaults */
    hard(64, 150, 10, 300, &r, &bad, &checked); /* groups of 32 and a rest */
    hard(128, 150, 10, 256, &r, &bad, &checked);
    hard(37, 7, 9, 290, &r, &bad, &checked); /* d not a multiple of 32, L K of 63 planes */
    hard(1, 3, 5, 260, &r, &bad, &checked);
    CHECK(bad == 0, "%lld of %lld code bits differ from kv_dot_fixed's signs", (long long)bad, (long long)checked);
    return kv_test_result("test_simhash");
}
