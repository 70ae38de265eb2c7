/* test_quant.c - the quantised caches' building blocks (methods/quant.h)
 * and QJL's estimator, through the method interface.
 *
 *   - half precision: every finite half survives half -> float -> half, and
 *     float -> half rounds to nearest even at the edges (65504, 65520,
 *     subnormals);
 *   - b-bit quantisation: every element read back within s/2 of itself (s
 *     the stored half scale), plus half's rounding of the zero point and
 *     float rounding of z + s c; codes fit b
 *     bits; a group beyond half's range is refused;
 *   - the sealed envelope: round trip, any flipped byte or cut rejected;
 *   - QJL: over 4000 projection seeds the logit estimate of one key has mean
 *     <q, k> within 5 standard errors and variance within 20% of
 *     ((pi/2) |q|^2 |k|^2 - <q, k>^2) / m (its exact variance), while the
 *     estimate without the sqrt(pi/2) factor would be 20% off; the same
 *     seed gives the same estimate bitwise on rank 0 of 1 and rank 2 of 3
 *     (S is shared); a key still in the residual window is exact. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/partial.h"
#include "methods/method.h"
#include "methods/common/quant.h"
#include "testutil.h"

static void test_half(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 0x1f) == 0x1f) continue; /* inf, nan */
        float f = kv_half_to_float((uint16_t)h);
        bad += kv_half_from_float(f) != h;
    }
    CHECK(bad == 0, "%d finite halves do not survive a round trip", bad);
    CHECK(kv_half_from_float(65504.0f) == 0x7bff, "65504 -> %#x", kv_half_from_float(65504.0f));
    CHECK(kv_half_from_float(65519.0f) == 0x7bff, "65519 -> %#x", kv_half_from_float(65519.0f));
    CHECK(kv_half_from_float(65520.0f) == 0x7c00, "65520 must round to inf");
    CHECK(kv_half_from_float(-1e9f) == 0xfc00, "-1e9 must give -inf");
    CHECK(kv_half_from_float(1.0f) == 0x3c00, "1 -> %#x", kv_half_from_float(1.0f));
    /* 1 + 2^-11 is halfway between 1 and 1 + 2^-10: to even (1) */
    CHECK(kv_half_from_float(1.0f + 0x1p-11f) == 0x3c00, "1+2^-11 must round to even");
    CHECK(kv_half_from_float(1.0f + 3 * 0x1p-11f) == 0x3c02, "1+3*2^-11 must round to even (up)");
    CHECK(kv_half_from_float(0x1p-24f) == 0x0001, "2^-24 is the smallest subnormal");
    CHECK(kv_half_from_float(0x1p-25f) == 0x0000, "2^-25 is halfway to 0: to even");
    CHECK(kv_half_to_float(0x0001) == 0x1p-24f && kv_half_to_float(0xc000) == -2.0f, "half -> float");
}

static void test_quantise(void)
{
    kv_rng r;
    kv_rng_seed(&r, 5, 0, 0);
    const int bits[] = { 2, 4, 8 };
    for (int bi = 0; bi < 3; bi++) {
        int b = bits[bi], worst_code = 0;
        double worst = 0;
        for (int trial = 0; trial < 200; trial++) {
            size_t n = 1 + (size_t)kv_rng_below(&r, 70);
            float x[70];
            double amp = pow(10.0, (double)kv_rng_below(&r, 7) - 3.0), off = amp * kv_rng_normal(&r);
            for (size_t i = 0; i < n; i++) x[i] = (float)(off + amp * kv_rng_normal(&r));
            uint8_t codes[70] = { 0 };
            uint16_t zs[2];
            CHECK(kv_quantise(x, n, 1, b, codes, 0, 1, zs) == 0, "quantise refused a finite small group");
            float y[70], s = kv_half_to_float(zs[1]), mx = 0;
            kv_dequantise(codes, 0, 1, n, b, zs, y, 1);
            for (size_t i = 0; i < n; i++) mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
            for (size_t i = 0; i < n; i++) {
                /* code rounding s/2; below a zero point that half rounded up, z - x is
                 * at most half's rounding of the minimum (2^-11 relative, 2^-25 for
                 * subnormals); plus float rounding in (x - z) / s and z + s c */
                double z = kv_half_to_float(zs[0]);
                double e = fabs((double)x[i] - y[i]) - (s / 2 + fabs(z) * 0x1p-11 + 0x1p-25 + 8 * mx * 0x1p-24);
                worst = e > worst ? e : worst;
                worst_code |= kv_qcode_get(codes, b, i) > (1u << b) - 1;
            }
        }
        CHECK(worst <= 0, "%d bits: an element read back %.3g beyond s/2", b, worst);
        CHECK(!worst_code, "%d bits: a code beyond %d bits", b, b);
    }
    float big[2] = { -70000.0f, 1.0f };
    uint8_t c[1] = { 0 };
    uint16_t zs[2];
    CHECK(kv_quantise(big, 2, 1, 4, c, 0, 1, zs) == -1, "a zero point beyond half must be refused");
    float same[3] = { 2.5f, 2.5f, 2.5f }, back[3];
    CHECK(kv_quantise(same, 3, 1, 2, c, 0, 1, zs) == 0, "a constant group");
    kv_dequantise(c, 0, 1, 3, 2, zs, back, 1);
    CHECK(back[0] == 2.5f && back[2] == 2.5f, "a constant group reads back %g", back[0]);
}

/* a payload of 100 words and 3 odd bytes (the hash's last partial word) */
static void sealed_payload(const void *obj, kv_buf *b)
{
    (void)obj;
    for (int i = 0; i < 100; i++) kv_buf_put_i64(b, i * 7);
    kv_buf_put(b, "abc", 3);
}

/* a refilling reader's source: bytes of a memory block */
static int mem_fill(void *ctx, void *dst, size_t n, size_t at, kv_err *err)
{
    (void)err;
    memcpy(dst, (const uint8_t *)ctx + at, n);
    return KV_OK;
}

static void test_sealed(void)
{
    kv_buf p, out;
    kv_buf_init(&p);
    kv_buf_init(&out);
    sealed_payload(NULL, &p);
    kv_qsave_sealed(&out, sealed_payload, NULL);
    CHECK(!out.failed && out.len == 16 + p.len, "sealed: %zu bytes, expected 16 + %zu", out.len, p.len);
    kv_err err;
    kv_rd in = { .data = out.data, .len = out.len, .what = "t" }, pl;
    kv_err_clear(&err);
    CHECK(kv_qload_sealed(&in, &pl, &err) == KV_OK && pl.len == p.len && !memcmp(pl.data, p.data, p.len) &&
              in.pos == out.len, "sealed round trip: %s", err.msg);
    /* the same bytes through a refilling reader with a 5-byte window: the
     * hash is taken in pieces, the payload is then read from its start */
    kv_rd_src src;
    CHECK(kv_rd_src_init(&src, out.len, 5, mem_fill, out.data, &err) == KV_OK, "source: %s", err.msg);
    in = kv_rd_of_src(&src, "t");
    uint8_t back[sizeof(int64_t) * 100 + 3];
    int ok = kv_qload_sealed(&in, &pl, &err) == KV_OK && pl.len == p.len && in.pos == out.len &&
             kv_rd_get(&pl, back, pl.len, &err) == KV_OK && !memcmp(back, p.data, p.len);
    CHECK(ok && src.peak <= 5, "sealed round trip through a 5-byte window: %s (window held %zu)", err.msg, src.peak);
    int missed = 0;
    for (size_t i = 0; i < out.len; i++) {
        out.data[i] ^= 0x10;
        in = (kv_rd){ .data = out.data, .len = out.len, .what = "t" };
        kv_err_clear(&err);
        missed += kv_qload_sealed(&in, &pl, &err) != KV_EINPUT;
        in = kv_rd_of_src(&src, "t");
        src.wlen = 0; /* the bytes changed under the window */
        kv_err_clear(&err);
        missed += kv_qload_sealed(&in, &pl, &err) != KV_EINPUT;
        out.data[i] ^= 0x10;
    }
    kv_rd_src_free(&src);
    for (size_t cut = 0; cut < out.len; cut++) {
        in = (kv_rd){ .data = out.data, .len = cut, .what = "t" };
        kv_err_clear(&err);
        missed += kv_qload_sealed(&in, &pl, &err) != KV_EINPUT || strncmp(err.msg, "checkpoint: ", 12);
    }
    CHECK(missed == 0, "%d flipped or cut envelopes accepted", missed);
    /* a counting buffer learns the envelope's size without hashing */
    kv_buf c;
    kv_buf_init_count(&c);
    kv_qsave_sealed(&c, sealed_payload, NULL);
    CHECK(c.total == out.len && !c.data, "counted %zu bytes of %zu", c.total, out.len);
    kv_buf_free(&p);
    kv_buf_free(&out);
}

/* QJL's logit for one key k (the state's max), scale 1 */
static double qjl_logit(const char *spec, uint64_t seed, int rank, int P, const float *k, const float *q, int d)
{
    kv_method_ctx c;
    memset(&c, 0, sizeof c);
    c.d = d;
    c.dv = 2;
    c.scale = 1.0;
    c.n_total = 1;
    c.rank = rank;
    c.nranks = P;
    c.shard_tokens = 1;
    c.seed = seed;
    kv_spec *sp = NULL;
    int cnt = 0;
    void *st = NULL;
    kv_err err;
    kv_err_clear(&err);
    const kv_method_ops *ops = kv_method_find("qjl");
    double out[KV_PSTATE_LEN(2)];
    float v[2] = { 1, -1 };
    out[0] = NAN;
    if (!ops || kv_spec_parse_list(spec, &sp, &cnt, &err) || ops->create(&sp[0], &c, &st, &err) ||
        ops->ingest(st, k, v, 0, 1, &err) || ops->partial(st, q, 1, 1, out))
        CHECK(0, "qjl: %s", err.msg);
    if (st) ops->free(st);
    free(sp);
    return out[KV_PS_M];
}

static void test_qjl(void)
{
    enum { D = 16, M = 64, T = 4000 };
    float k[D], q[D];
    kv_rng r;
    kv_rng_seed(&r, 9, 1, 2);
    for (int i = 0; i < D; i++) k[i] = (float)kv_rng_normal(&r);
    for (int i = 0; i < D; i++) q[i] = (float)(0.7 * k[i] + 0.7 * kv_rng_normal(&r));
    double qk = 0, qq = 0, kk = 0;
    for (int i = 0; i < D; i++) {
        qk += (double)q[i] * k[i];
        qq += (double)q[i] * q[i];
        kk += (double)k[i] * k[i];
    }
    double var = (M_PI / 2 * qq * kk - qk * qk) / M, sum = 0, sum2 = 0;
    for (int t = 0; t < T; t++) {
        double e = qjl_logit("qjl:m=64,residual=0", (uint64_t)t, 0, 1, k, q, D);
        sum += e;
        sum2 += e * e;
    }
    double mean = sum / T, svar = (sum2 - T * mean * mean) / (T - 1), se = sqrt(var / T);
    printf("qjl: <q,k> %.4f, mean estimate %.4f (se %.4f), variance %.4f (theory %.4f)\n", qk, mean, se, svar, var);
    /* float rounding of the table sums: far below a standard error */
    CHECK(fabs(mean - qk) <= 5 * se + 1e-4 * sqrt(qq * kk), "qjl mean %.5f vs <q,k> %.5f (5 se = %.5f)", mean, qk,
          5 * se);
    CHECK(fabs(mean * sqrt(2 / M_PI) - qk) > 5 * se, "the test cannot tell a missing sqrt(pi/2) (mean %.4f)", mean);
    CHECK(svar > 0.8 * var && svar < 1.2 * var, "qjl variance %.4f vs %.4f", svar, var);
    double a = qjl_logit("qjl:m=64,residual=0", 77, 0, 1, k, q, D), b = qjl_logit("qjl:m=64,residual=0", 77, 2, 3, k, q, D);
    CHECK(a == b, "the projection depends on the rank: %.17g vs %.17g", a, b);
    /* d = 5: the default m = 2d rounds up to whole sign bytes (16 bits; the
     * only row is the last one, so ASan sees any write past it) */
    double y5 = qjl_logit("qjl:residual=0", 3, 0, 1, k, q, 5);
    CHECK(isfinite(y5), "qjl at d = 5 with the default m: %g", y5);
    double x = qjl_logit("qjl:m=64,residual=1", 77, 0, 1, k, q, D);
    CHECK(fabs(x - qk) <= 1e-5 * sqrt(qq * kk), "a key in the residual window must be exact: %.7g vs %.7g", x, qk);
}

int main(void)
{
    test_half();
    test_quantise();
    test_sealed();
    test_qjl();
    return kv_test_result("test_quant");
}
