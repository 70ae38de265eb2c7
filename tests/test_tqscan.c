/* test_tqscan.c - TurboQuant's one-query kernels (methods/tqscan.h) and the
 * codec's decode (methods/tqcodec.h) against scalar references, at 1..4 bits,
 * head dimensions with partial words and 3-bit codes straddling words
 * (8, 19, 64, 72, 128), 1..256 rows of an odd length interleaved in blocks
 * of 16 (tqscan.h: kv_tq_byte_at), the rows' other bytes, the rows past n
 * in the last block and the unused bits of the last code byte random (the
 * kernels must ignore them); the norms of kv_tq_scan_weights read from the
 * blocks against the rows'; kv_tq_block_rows gives the rows back exactly.
 *
 * Tolerances, derived: a dot is sum over d terms of q_i c_i, computed as
 * table entries (sums of g <= 4 products) added in two chains; a value sum
 * is u + sum over n rows of w_r c_r in 16 lanes then a tree.  Each is a
 * float sum of at most m = d + 1 (or n + 1) terms, whose error is at most
 * gamma(m) = m u / (1 - m u) times the sum of the terms' magnitudes
 * (u = 2^-24; Higham, Accuracy and Stability, 3.1), checked with that bound
 * against the sum in double.  decode: scale c[code] exactly (one product). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/partial.h"
#include "methods/common/tqcodec.h"
#include "methods/common/tqscan.h"
#include "testutil.h"

static unsigned code_ref(const uint8_t *p, int b, int i)
{
    unsigned v = 0;
    for (int k = 0; k < b; k++) {
        size_t bit = (size_t)i * b + k;
        v |= (unsigned)((p[bit >> 3] >> (bit & 7)) & 1) << k;
    }
    return v;
}

/* rows (n row-major rows of stride bytes, the first nrm floats) into blocks (whole blocks) */
static uint8_t *blocks_of(const uint8_t *rows, size_t stride, int n, size_t nrm, kv_rng *r)
{
    int nbk = (n + 15) / 16;
    uint8_t *B = malloc(stride * 16 * (size_t)nbk);
    for (size_t i = 0; i < stride * 16 * (size_t)nbk; i++) B[i] = (uint8_t)(kv_rng_next(r) >> 56);
    for (int t = 0; t < n; t++)
        for (size_t j = 0; j < stride; j++)
            B[(size_t)(t / 16) * 16 * stride + kv_tq_byte_at(j, nrm, t % 16)] = rows[(size_t)t * stride + j];
    return B;
}

static double gam(int m) { return m * 0x1p-24 / (1 - m * 0x1p-24); }

static void one(kv_rng *r, int d, int b, int n)
{
    kv_tq_book bk;
    CHECK(!kv_tq_book_make(&bk, d, b), "book d=%d b=%d", d, b);
    size_t nb = kv_tq_code_bytes(b, (size_t)d), stride = 8 + nb + 5; /* codes at 8 of each row, odd stride */
    uint8_t *rows = malloc(stride * (size_t)n);
    float *q = malloc(sizeof(float) * (size_t)d), *T = malloc(sizeof(float) * 16 * (size_t)d),
          *out = malloc(sizeof(float) * KV_TQ_SCAN_MAX), *w = calloc(KV_TQ_SCAN_MAX + 16, sizeof(float)),
          *u = malloc(sizeof(float) * (size_t)d), *x = malloc(sizeof(float) * (size_t)d);
    for (size_t i = 0; i < stride * (size_t)n; i++) rows[i] = (uint8_t)(kv_rng_next(r) >> 56);
    uint8_t *B = blocks_of(rows, stride, n, 8, r);
    for (int i = 0; i < d; i++) q[i] = (float)kv_rng_normal(r), u[i] = (float)kv_rng_normal(r);
    for (int t = 0; t < n; t++) w[t] = (float)fabs(kv_rng_normal(r));
    kv_tq_tables(&bk, q, T);
    kv_tq_scan_dots(&bk, T, B + 16 * 8, nb, 16 * stride, n, out);
    double worst = 0;
    for (int t = 0; t < n; t++) {
        double s = 0, a = 0;
        for (int i = 0; i < d; i++) {
            double y = (double)q[i] * bk.c[code_ref(rows + (size_t)t * stride + 8, b, i)];
            s += y, a += fabs(y);
        }
        worst = fmax(worst, fabs(out[t] - s) / (gam(d + 1) * a + 1e-30));
    }
    CHECK(worst <= 1, "dots d=%d b=%d n=%d: error %.3g of its bound", d, b, n, worst);
    float u0[256];
    memcpy(u0, u, sizeof(float) * (size_t)d);
    kv_tq_scan_axpys(&bk, B + 16 * 8, nb, 16 * stride, n, w, u);
    worst = 0;
    for (int i = 0; i < d; i++) {
        double s = u0[i], a = fabs(u0[i]);
        for (int t = 0; t < n; t++) {
            double y = (double)w[t] * bk.c[code_ref(rows + (size_t)t * stride + 8, b, i)];
            s += y, a += fabs(y);
        }
        worst = fmax(worst, fabs(u[i] - s) / (gam(n + 1) * a + 1e-30));
    }
    CHECK(worst <= 1, "axpys d=%d b=%d n=%d: error %.3g of its bound", d, b, n, worst);
    int bad = 0;
    for (int t = 0; t < n && !bad; t++) {
        const uint8_t *c = rows + (size_t)t * stride + 8;
        kv_tq_decode(&bk, c, 1.5f, x);
        for (int i = 0; i < d; i++) bad += x[i] != 1.5f * bk.c[code_ref(c, b, i)];
    }
    CHECK(!bad, "decode d=%d b=%d: %d coordinates off", d, b, bad);
    uint8_t *back = malloc(16 * stride + 3); /* kv_tq_block_rows: the rows again, exactly */
    for (int t0 = 0; t0 < n && !bad; t0 += 16) {
        int m = n - t0 < 16 ? n - t0 : 16;
        kv_tq_block_rows(B + (size_t)(t0 / 16) * 16 * stride, stride, 8, m, back);
        bad = memcmp(back, rows + (size_t)t0 * stride, stride * (size_t)m) != 0;
    }
    CHECK(!bad, "block_rows d=%d b=%d n=%d: rows differ", d, b, n);
    free(back);
    free(rows), free(B), free(q), free(T), free(out), free(w), free(u), free(x);
}

/* kv_tq_scan_weights on n rows in blocks (norms |k|, |v|, |r| at row
 * bytes 0, 4, 8; the rows past n random): each weight against
 * exp(scale |k| (lg + coef |r| sg) - max) |v| from the row-major norms in
 * double.  This checks the layout (which norms each lane reads): a wrong
 * row's norm moves a weight by O(1); the float arithmetic (a few products,
 * one exponential) stays within 1e-5 relative (no more is claimed here). */
static void weights(kv_rng *r, int n, int prod)
{
    size_t stride = 12 + 9; /* three norms, some code bytes */
    uint8_t *rows = calloc(stride, (size_t)n), *B;
    float lg[KV_TQ_SCAN_MAX + 16], sg[KV_TQ_SCAN_MAX + 16], l0[KV_TQ_SCAN_MAX];
    double st[KV_PSTATE_LEN(4)], want[KV_TQ_SCAN_MAX], mx = -INFINITY, L = 0;
    const float coef = 0.3f, scale = 0.7f;
    if (!rows) {
        CHECK(0, "weights: out of memory");
        return;
    }
    for (size_t i = 0; i < stride * (size_t)n; i++) rows[i] = (uint8_t)(kv_rng_next(r) >> 56);
    for (int t = 0; t < n; t++)
        for (int f = 0; f < 3; f++) {
            float x = (float)(0.5 + fabs(kv_rng_normal(r)));
            memcpy(rows + (size_t)t * stride + 4 * f, &x, 4);
        }
    B = blocks_of(rows, stride, n, 12, r);
    for (int t = 0; t < n; t++) lg[t] = l0[t] = (float)kv_rng_normal(r), sg[t] = (float)kv_rng_normal(r);
    for (int t = 0; t < n; t++) {
        float nm[3];
        memcpy(nm, rows + (size_t)t * stride, sizeof nm);
        want[t] = (double)scale * nm[0] * (l0[t] + (prod ? (double)coef * nm[2] * sg[t] : 0));
        mx = fmax(mx, want[t]);
    }
    for (int t = 0; t < n; t++) {
        float nm[3];
        memcpy(nm, rows + (size_t)t * stride, sizeof nm);
        L += exp(want[t] - mx);
        want[t] = exp(want[t] - mx) * nm[1];
    }
    kv_partial_clear(st, 4);
    kv_tq_scan_weights(B, 16 * stride, n, prod, coef, scale, lg, sg, st, 4);
    double worst = fabs(st[KV_PS_L] - L) / L;
    for (int t = 0; t < n; t++) worst = fmax(worst, fabs(lg[t] - want[t]) / fmax(want[t], 1e-30));
    CHECK(worst <= 1e-5, "weights n=%d prod=%d: relative error %.3g", n, prod, worst);
    free(rows), free(B);
}

/* kv_tq_rotate against the products in double: one chain of d terms per output */
static void rotate(kv_rng *r, int d, int nt)
{
    float *RT = malloc(sizeof(float) * (size_t)d * d), *x = malloc(sizeof(float) * (size_t)nt * d),
          *y = malloc(sizeof(float) * (size_t)nt * d);
    for (int i = 0; i < d * d; i++) RT[i] = (float)kv_rng_normal(r);
    for (int i = 0; i < nt * d; i++) x[i] = (float)kv_rng_normal(r);
    kv_tq_rotate(RT, d, x, nt, y);
    double worst = 0;
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < d; j++) {
            double s = 0, a = 0;
            for (int c = 0; c < d; c++) {
                double p = (double)x[t * d + c] * RT[c * d + j];
                s += p, a += fabs(p);
            }
            worst = fmax(worst, fabs(y[t * d + j] - s) / (gam(d) * a + 1e-30));
        }
    CHECK(worst <= 1, "rotate d=%d nt=%d: error %.3g of its bound", d, nt, worst);
    free(RT), free(x), free(y);
}

int main(void)
{
    kv_rng r;
    kv_rng_seed(&r, 11, 0, 0);
    const int ds[] = { 8, 19, 64, 72, 128 }, ns[] = { 1, 15, 16, 17, 100, 256 };
    for (int b = 1; b <= 4; b++)
        for (int i = 0; i < 5; i++)
            for (int j = 0; j < 6; j++) one(&r, ds[i], b, ns[j]);
    for (int j = 0; j < 6; j++) {
        weights(&r, ns[j], 0);
        weights(&r, ns[j], 1);
    }
    for (int i = 0; i < 5; i++) {
        rotate(&r, ds[i], 1);
        rotate(&r, ds[i], 8);
        rotate(&r, ds[i], 13);
    }
    return kv_test_result("test_tqscan");
}
