/* test_expf.c - the vectorised exp behind every exact kernel (kv_expf_neg,
 * the same polynomial the batched kernels inline; src/kernels/attn.c).
 *
 * Its documented bound: relative error <= 1e-7 for every float x in
 * [-87, 0] (the worst over all 1.1e9 of them is 8.4e-8 with FMA contraction
 * and 8.2e-8 without, so the check holds on any x86-64 build), and exactly 0
 * below -87 and at -inf (the masked logits of the batched kernels).  Checked
 * here on every 61st float of the range (18 million, a spread of exponents
 * and mantissas) plus the end points, against double exp. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "testutil.h"

int main(void)
{
    const double bound = 1e-7;
    float lo = -87.0f, hi = -0.0f;
    uint32_t ulo, uhi; /* negative floats: the bit pattern grows with the magnitude */
    memcpy(&ulo, &hi, sizeof ulo);
    memcpy(&uhi, &lo, sizeof uhi);
    enum { N = 1 << 16 };
    float *x = malloc(sizeof(float) * N), *y = malloc(sizeof(float) * N);
    double worst = 0;
    float worst_x = 0;
    size_t count = 0;
    for (uint64_t u = ulo; u <= uhi;) {
        int m = 0;
        for (; m < N && u <= uhi; m++, u += 61) { uint32_t b = (uint32_t)u; memcpy(&x[m], &b, sizeof b); }
        if (u > uhi && m < N) x[m++] = lo; /* the end point */
        memcpy(y, x, sizeof(float) * m);
        kv_expf_neg(y, (size_t)m);
        for (int i = 0; i < m; i++) {
            double e = exp((double)x[i]), r = fabs((double)y[i] - e) / e;
            if (r > worst) { worst = r; worst_x = x[i]; }
        }
        count += (size_t)m;
    }
    CHECK(worst <= bound, "relative error %.3g at x = %.9g over the bound %.3g", worst, worst_x, bound);
    float z[6] = { -87.5f, -88.0f, -100.0f, -1e30f, -INFINITY, 0.0f };
    kv_expf_neg(z, 6);
    CHECK(z[0] == 0.0f && z[1] == 0.0f && z[2] == 0.0f && z[3] == 0.0f && z[4] == 0.0f, "x < -87 must give 0");
    CHECK(z[5] == 1.0f, "exp(0) = %.9g, not 1", z[5]);
    printf("kv_expf_neg: %zu floats in [-87, 0], worst relative error %.3g at x = %.9g (bound %.3g)\n", count, worst,
           (double)worst_x, bound);
    free(x);
    free(y);
    return kv_test_result("test_expf");
}
