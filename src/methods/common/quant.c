/* quant.c - half precision, asymmetric b-bit quantisation, the sealed
 * checkpoint envelope and its float rings (see quant.h). */
#include <math.h>
#include <string.h>
#include "core/rng.h"
#include "methods/common/quant.h"

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
    if (!(s > 0)) return 0; /* every code 0: nothing to set */
    const float Lf = (float)L;
    uint8_t u[64];
    for (size_t i0 = 0; i0 < n; i0 += 64) { /* the codes a chunk at a time (a loop that vectorises), then packed */
        size_t m = n - i0 < 64 ? n - i0 : 64;
        const float *xi = x + i0 * stride;
        if (stride == 1)
            for (size_t i = 0; i < m; i++) {
                float c = rintf((xi[i] - z) / s);
                u[i] = (uint8_t)(int)(c <= 0 ? 0.0f : c >= Lf ? Lf : c);
            }
        else
            for (size_t i = 0; i < m; i++) {
                float c = rintf((xi[i * stride] - z) / s);
                u[i] = (uint8_t)(int)(c <= 0 ? 0.0f : c >= Lf ? Lf : c);
            }
        for (size_t i = 0; i < m; i++) {
            size_t bit = (pos + (i0 + i) * pstep) * (size_t)bits;
            codes[bit >> 3] |= (uint8_t)(u[i] << (bit & 7));
        }
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

/* The envelope's hash, fed in pieces of any size: 64-bit words of the byte
 * stream (little-endian, as memcpy reads them here), the length last. */
typedef struct {
    uint64_t h;
    uint8_t tail[8];
    size_t nt, n;
} qhash;

static void qh_init(qhash *q)
{
    memset(q, 0, sizeof *q);
    q->h = kv_mix64(0x71756e74ULL); /* "qunt" */
}

static void qh_add(qhash *q, const uint8_t *p, size_t n)
{
    q->n += n;
    while (n && q->nt) { /* finish the word a previous piece began */
        q->tail[q->nt++] = *p++;
        n--;
        if (q->nt == 8) {
            uint64_t w;
            memcpy(&w, q->tail, 8);
            q->h = kv_mix64(q->h ^ w);
            q->nt = 0;
        }
    }
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        q->h = kv_mix64(q->h ^ w);
    }
    if (n) memcpy(q->tail, p, n); /* n < 8 and nt == 0 here */
    q->nt += n;
}

static uint64_t qh_end(const qhash *q)
{
    uint8_t t[8] = { 0 };
    uint64_t w;
    memcpy(t, q->tail, q->nt);
    memcpy(&w, t, 8);
    return kv_mix64(kv_mix64(q->h ^ w ^ 0x5a) ^ (uint64_t)q->n);
}

static int hash_sink(void *ctx, const void *p, size_t n, size_t at)
{
    (void)at;
    qh_add(ctx, p, n);
    return 0;
}

void kv_qsave_sealed(kv_buf *out, kv_buf_saver save, const void *obj)
{
    if (out->failed) return;
    if (out->count_only) { /* only the size: no hash needed */
        kv_buf_put_i64(out, 0);
        kv_buf_put_i64(out, 0);
        save(obj, out);
        return;
    }
    /* a first walk hashes the payload through a small buffer; the second
     * writes it straight into out: no copy of the state */
    qhash q;
    qh_init(&q);
    kv_buf hb;
    kv_buf_init_bounded(&hb, (size_t)1 << 16, hash_sink, &q);
    save(obj, &hb);
    kv_buf_flush(&hb);
    int bad = hb.failed;
    size_t len = hb.total;
    kv_buf_free(&hb);
    if (bad) { out->failed = 1; return; }
    kv_buf_put_i64(out, (int64_t)len);
    kv_buf_put_i64(out, (int64_t)qh_end(&q));
    size_t at = out->total;
    save(obj, out);
    if (!out->failed && out->total - at != len) out->failed = 1; /* save must be deterministic */
}

int kv_qload_sealed(kv_rd *in, kv_rd *payload, kv_err *err)
{
    int64_t len, h;
    const char *w = in->what ? in->what : "a";
    if (kv_rd_i64(in, &len, err) || kv_rd_i64(in, &h, err)) return err->code;
    if (len < 0 || (uint64_t)len > in->len - in->pos)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state is truncated or has a bad length", w);
    kv_rd sub;
    if (kv_rd_sub(in, (size_t)len, &sub, err)) return err->code;
    qhash q;
    qh_init(&q);
    if (sub.data) {
        qh_add(&q, sub.data, sub.len);
    } else { /* from a refilling source: hash it piece by piece, then parse it again from the start */
        kv_rd walk = sub;
        uint8_t tmp[8192];
        while (walk.pos < walk.len) {
            size_t k = walk.len - walk.pos < sizeof tmp ? walk.len - walk.pos : sizeof tmp;
            if (kv_rd_get(&walk, tmp, k, err)) return err->code;
            qh_add(&q, tmp, k);
        }
    }
    if ((uint64_t)h != qh_end(&q)) return kv_seterr(err, KV_EINPUT, "checkpoint: %s state does not match its checksum", w);
    *payload = sub;
    return KV_OK;
}

int kv_qrings_load(kv_tokring *tail, kv_tokring *edge, kv_rd *payload, int64_t tail_from, int64_t known,
                   int64_t held, int64_t lim, int64_t n_total, kv_err *err)
{
    const char *w = payload->what ? payload->what : "a";
    int64_t tcap = tail->cap, ecap = edge->cap;
    int rc = kv_tokring_load(tail, payload, lim, n_total, err) || kv_tokring_load(edge, payload, lim, n_total, err);
    if (!rc && payload->pos != payload->len) rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state has trailing bytes", w);
    const kv_tokring *t = tail, *e = edge;
    if (!rc && ((t->count && (kv_tokring_idx(t, 0) < tail_from || kv_tokring_idx(t, t->count - 1) >= known)) ||
                (e->count && kv_tokring_idx(e, e->count - 1) >= known) || held + t->count + e->count > lim))
        rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state holds tokens out of order", w);
    if (rc) {
        int d = tail->d, dv = tail->dv;
        kv_tokring_free(tail);
        kv_tokring_free(edge);
        kv_tokring_init(tail, d, dv, tcap);
        kv_tokring_init(edge, d, dv, ecap);
        return err->code;
    }
    return KV_OK;
}
