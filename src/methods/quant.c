/* quant.c - half precision, asymmetric b-bit quantisation, the sealed
 * checkpoint envelope (see quant.h). */
#include <math.h>
#include <string.h>
#include "core/rng.h"
#include "methods/quant.h"

uint16_t kv_half_from_float(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0)); /* inf, nan */
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                                    /* below 2^-14: subnormal half (unit 2^-24) */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint16_t)lrintf(a * 16777216.0f)); /* exact scaling, rounds to even */
    }
    uint32_t h = ((((ax >> 23) - 127 + 15) & 0x1fu) << 10) | ((ax & 0x7fffffu) >> 13), rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* a carry into the exponent is right too */
    return (uint16_t)(sign | h);
}

float kv_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0) {
        float v = (float)m * 5.9604644775390625e-8f; /* m 2^-24, exact */
        return sign ? -v : v;
    }
    if (e == 31) x = sign | 0x7f800000u | (m << 13);
    else x = sign | ((e - 15 + 127) << 23) | (m << 13);
    float f;
    memcpy(&f, &x, 4);
    return f;
}

int kv_quantise(const float *x, size_t n, size_t stride, int bits, uint8_t *codes, size_t pos, size_t pstep,
                uint16_t *zs)
{
    float lo = x[0], hi = x[0];
    for (size_t i = 1; i < n; i++) {
        float v = x[i * stride];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    unsigned L = (1u << bits) - 1;
    uint16_t zh = kv_half_from_float(lo);
    float z = kv_half_to_float(zh);
    if (!isfinite(z)) return -1;
    float s = hi > z ? (hi - z) / (float)L : 0.0f;
    uint16_t sh = kv_half_from_float(s);
    /* round the scale up until z + s L covers the maximum */
    while (kv_half_to_float(sh) < INFINITY && z + kv_half_to_float(sh) * (float)L < hi) sh++;
    s = kv_half_to_float(sh);
    if (!isfinite(s)) return -1;
    zs[0] = zh;
    zs[1] = sh;
    for (size_t i = 0; i < n; i++) {
        float c = s > 0 ? rintf((x[i * stride] - z) / s) : 0.0f;
        unsigned u = c <= 0 ? 0u : c >= (float)L ? L : (unsigned)c;
        size_t bit = (pos + i * pstep) * (size_t)bits;
        codes[bit >> 3] |= (uint8_t)(u << (bit & 7));
    }
    return 0;
}

void kv_dequantise(const uint8_t *codes, size_t pos, size_t pstep, size_t n, int bits, const uint16_t *zs, float *x,
                   size_t stride)
{
    float z = kv_half_to_float(zs[0]), s = kv_half_to_float(zs[1]);
    if (pstep == 1 && stride == 1) { /* contiguous: the loops below, which vectorise */
        switch (bits) {
        case 8: for (size_t i = 0; i < n; i++) x[i] = z + s * (float)codes[pos + i]; return;
        case 4:
            for (size_t i = 0; i < n; i++) x[i] = z + s * (float)((codes[(pos + i) >> 1] >> (((pos + i) & 1) * 4)) & 15u);
            return;
        case 2:
            for (size_t i = 0; i < n; i++) x[i] = z + s * (float)((codes[(pos + i) >> 2] >> (((pos + i) & 3) * 2)) & 3u);
            return;
        default: break;
        }
    }
    for (size_t i = 0; i < n; i++) x[i * stride] = z + s * (float)kv_qcode_get(codes, bits, pos + i * pstep);
}

void kv_dequantise_row(const uint8_t *codes, size_t pos, size_t n, int bits, const float *z, const float *s,
                       float *out)
{
    switch (bits) {
    case 8: for (size_t i = 0; i < n; i++) out[i] = z[i] + s[i] * (float)codes[pos + i]; return;
    case 4:
        for (size_t i = 0; i < n; i++)
            out[i] = z[i] + s[i] * (float)((codes[(pos + i) >> 1] >> (((pos + i) & 1) * 4)) & 15u);
        return;
    case 2:
        for (size_t i = 0; i < n; i++)
            out[i] = z[i] + s[i] * (float)((codes[(pos + i) >> 2] >> (((pos + i) & 3) * 2)) & 3u);
        return;
    default:
        for (size_t i = 0; i < n; i++) out[i] = z[i] + s[i] * (float)kv_qcode_get(codes, bits, pos + i);
    }
}

int kv_qparams_ok(const uint16_t *zs)
{
    float z = kv_half_to_float(zs[0]), s = kv_half_to_float(zs[1]);
    return isfinite(z) && isfinite(s) && s >= 0;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = kv_mix64(0x71756e74ULL ^ (uint64_t)n); /* "qunt" */
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = kv_mix64(h ^ w);
    }
    uint64_t w = 0;
    if (n > i) memcpy(&w, p + i, n - i); /* p may be NULL when n == 0 */
    return kv_mix64(h ^ w ^ 0x5a);
}

void kv_qsave_sealed(kv_buf *out, const kv_buf *payload)
{
    if (payload->failed) {
        out->failed = 1;
        return;
    }
    kv_buf_put_i64(out, (int64_t)payload->len);
    kv_buf_put_i64(out, (int64_t)hash_bytes(payload->data, payload->len));
    kv_buf_put(out, payload->data, payload->len);
}

int kv_qload_sealed(kv_rd *in, kv_rd *payload, kv_err *err)
{
    int64_t len, h;
    const char *w = in->what ? in->what : "a";
    if (kv_rd_i64(in, &len, err) || kv_rd_i64(in, &h, err)) return err->code;
    if (len < 0 || (uint64_t)len > in->len - in->pos)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state is truncated or has a bad length", w);
    if ((uint64_t)h != hash_bytes(in->data + in->pos, (size_t)len))
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state does not match its checksum", w);
    *payload = (kv_rd){ .data = in->data + in->pos, .len = (size_t)len, .pos = 0, .what = in->what };
    in->pos += (size_t)len;
    return KV_OK;
}
