/* test_half.c - kernels/half.h against a table of every finite half.
 *
 * The reference is independent of half.c's arithmetic: each of the 63,488
 * finite half bit patterns is decoded from its fields (sign, exponent,
 * mantissa: ldexp, exact in double and float), and a float is "a half" iff
 * its bits are in that table.  kv_half_to_f32 must give those floats, and
 * kv_f32_to_half_exact must return the table's bits for every half and
 * stop at the first float that is not one, at every offset of the vector
 * blocks (16 and 8 lanes) and for lengths that leave a scalar tail. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/half.h"
#include "testutil.h"

#define NH 65536

static float ref_f(uint16_t h) /* finite h only */
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    return (float)((h & 0x8000) ? -v : v);
}

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static int cmp_u32(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x >> 16) < (y >> 16) ? -1 : (x >> 16) > (y >> 16);
}

/* table: (float bits << 16 | half bits), sorted by float bits */
static uint64_t tab[NH];
static int ntab;

static int ref_half(float f, uint16_t *h)
{
    uint64_t key = (uint64_t)bits(f) << 16;
    const uint64_t *p = bsearch(&key, tab, (size_t)ntab, sizeof *tab, cmp_u32);
    if (p) *h = (uint16_t)(*p & 0xffff);
    return p != NULL;
}

int main(void)
{
    float *f = malloc(sizeof(float) * NH);
    uint16_t *h = malloc(sizeof(uint16_t) * NH), *g = malloc(sizeof(uint16_t) * NH);
    int nf = 0;
    for (int b = 0; b < NH; b++) {
        if (((b >> 10) & 31) == 31) continue; /* inf, NaN */
        h[nf] = (uint16_t)b;
        f[nf] = ref_f((uint16_t)b);
        tab[ntab++] = (uint64_t)bits(f[nf]) << 16 | (uint64_t)b;
        nf++;
    }
    qsort(tab, (size_t)ntab, sizeof *tab, cmp_u32);
    CHECK(nf == 63488, "finite halves %d", nf);
    /* half -> float, all at once (vector blocks and the tail) */
    float *back = malloc(sizeof(float) * NH);
    kv_half_to_f32(h, (size_t)nf, back);
    int bad = 0;
    for (int i = 0; i < nf; i++) bad += bits(back[i]) != bits(f[i]);
    CHECK(bad == 0, "kv_half_to_f32: %d of %d floats differ from the fields' values", bad, nf);
    /* float -> half over every finite half: all taken, the table's bits */
    size_t r = kv_f32_to_half_exact(f, (size_t)nf, g);
    CHECK(r == (size_t)nf, "kv_f32_to_half_exact stopped at %zu of %d halves", r, nf);
    bad = 0;
    for (int i = 0; i < nf; i++) bad += g[i] != h[i];
    CHECK(bad == 0, "kv_f32_to_half_exact: %d halves with other bits", bad);
    /* a value that is not a half at position k of n: the call returns k,
     * and writes the halves before it */
    const float nothalf[] = { 1e-8f, 1.0f + 0x1p-11f, 65520.0f, 65504.0f * 2, INFINITY, -INFINITY, NAN, 0x1p-25f,
                              3.14159265f, -2049.0f };
    int nn = (int)(sizeof nothalf / sizeof *nothalf), cases = 0;
    for (int j = 0; j < nn; j++) {
        uint16_t dummy;
        CHECK(!ref_half(nothalf[j], &dummy), "reference: %g should not be a half", (double)nothalf[j]);
    }
    float x[80];
    uint16_t y[80];
    for (int n = 1; n <= 80; n += (n < 40 ? 1 : 7))
        for (int k = 0; k <= n; k++) {
            for (int i = 0; i < n; i++) x[i] = f[kv_hash4(7, (uint64_t)n, (uint64_t)i, 0) % (uint64_t)nf];
            if (k < n) x[k] = nothalf[(n + k) % nn];
            size_t want = (size_t)k;
            size_t got = kv_f32_to_half_exact(x, (size_t)n, y);
            CHECK(got == want, "n %d, not-a-half at %d: returned %zu", n, k, got);
            for (int i = 0; i < k && i < n; i++) {
                uint16_t e = 0x7c00;
                CHECK(ref_half(x[i], &e), "reference: %g is a half", (double)x[i]);
                CHECK(y[i] == e, "n %d k %d: half %d is %04x, want %04x", n, k, i, y[i], e);
            }
            cases++;
        }
    CHECK(cases > 1000, "cases %d", cases);
    free(f); free(h); free(g); free(back);
    return kv_test_result("test_half");
}
