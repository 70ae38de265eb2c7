/* qjl_fold.c - a tile of QJL's 2-bit values folded from bit planes (see
 * qjl_kern.h, kv_qjl_fold_planes). */
#include <math.h>
#include <string.h>
#include "kernels/attn.h"
#include "kernels/partial.h"
#include "kernels/qattn.h"
#include "kernels/qjl_kern.h"
#include "kernels/vshuf.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vf __attribute__((vector_size(4 * KV_QVL)));
typedef int vi __attribute__((vector_size(4 * KV_QVL)));

static inline vf ldf(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf bcf(float x) { return (vf){ 0 } + x; }

void kv_qjl_planes_put(const uint8_t *packed, int dv, uint8_t *planes)
{
    for (int c8 = 0; c8 < dv / 8; c8++) { /* 8 codes (16 bits) to a byte of each plane */
        unsigned w = packed[2 * c8] | (unsigned)packed[2 * c8 + 1] << 8, b0 = 0, b1 = 0;
        for (int i = 0; i < 8; i++) {
            b0 |= (w >> (2 * i) & 1) << i;
            b1 |= (w >> (2 * i + 1) & 1) << i;
        }
        planes[c8] = (uint8_t)b0;
        planes[dv / 8 + c8] = (uint8_t)b1;
    }
}

void kv_qjl_planes_get(const uint8_t *planes, int dv, uint8_t *packed)
{
    memset(packed, 0, (size_t)dv / 4);
    for (int c = 0; c < dv; c++) {
        int code = (planes[c >> 3] >> (c & 7) & 1) | (planes[dv / 8 + (c >> 3)] >> (c & 7) & 1) << 1;
        packed[c >> 2] |= (uint8_t)(code << (2 * (c & 3)));
    }
}

/* a[e] = w_t s_tg and Z[g] = sum_t w_t z_tg (e = t nvg + g): by vectors of
 * KV_QVL elements when nvg divides KV_QVL (w spread by a shuffle, lane l
 * always group l mod nvg), else element by element */
static void scales(const float *w, int nt, int nvg, const float *vz, const float *vs, float *a, float *Z)
{
    int ne = nt * nvg, e = 0;
    for (int g = 0; g < nvg; g++) Z[g] = 0;
    if (KV_QVL % nvg == 0) {
        vi ix, lane;
        for (int l = 0; l < KV_QVL; l++) {
            ix[l] = l / nvg;
            lane[l] = l;
        }
        vf zs = bcf(0);
        for (; e < ne; e += KV_QVL) {
            vf ww = KV_SHUF1(ldf(w + e / nvg), ix); /* reads up to KV_QVL past the tile's w: scratch */
            vi keep = lane < ne - e;
            vf x = ww * ldf(vs + e), y = (vf)((vi)(ww * ldf(vz + e)) & keep);
            memcpy(a + e, &x, sizeof x);
            zs += y;
        }
        for (int l = 0; l < KV_QVL; l++) Z[l % nvg] += zs[l];
        return;
    }
    for (int t = 0; t < nt; t++)
        for (int g = 0; g < nvg; g++) {
            a[t * nvg + g] = w[t] * vs[t * nvg + g];
            Z[g] += w[t] * vz[t * nvg + g];
        }
}

#if defined(__AVX512F__)
/* 16 bits from memory straight into a mask register (a load, not a move
 * from a general register through the shuffle port, which GCC emits for
 * a memcpy'd mask) */
static inline __mmask16 ldmask(const uint8_t *p)
{
    __mmask16 k;
    __asm__("kmovw %1, %0" : "=k"(k) : "m"(*(const uint8_t(*)[2])p));
    return k;
}
#endif

/* 16-channel chunks c0 .. c0 + nc (nc <= 4) over the tile: per chunk, plane
 * 0 and plane 1 sums of a_t (a masked add per set bit's lane), then
 * U = p0 + 2 p1 + Z into u (doubles) */
static inline __attribute__((always_inline)) void chunks(double *u, const uint8_t *codes, size_t vcb, int dv,
                                                         int gv, int nvg, const float *a, const float *Z, int nt,
                                                         int c0, const int nc)
{
#if defined(__AVX512F__)
    /* named accumulators, not arrays: GCC kept arrays in registers but
     * also stored them every token */
    __m512 x0 = _mm512_setzero_ps(), x1 = x0, x2 = x0, x3 = x0, y0 = x0, y1 = x0, y2 = x0, y3 = x0;
    int gk[4];
    for (int k = 0; k < nc; k++) gk[k] = 16 * (c0 + k) / gv;
    const uint8_t *cp = codes + 2 * (size_t)c0, *cq = cp + dv / 8;
    for (int t = 0; t < nt; t++, cp += vcb, cq += vcb) {
        const float *at = a + (size_t)t * nvg;
        __m512 w0 = _mm512_set1_ps(at[gk[0]]);
        x0 = _mm512_mask_add_ps(x0, ldmask(cp), x0, w0);
        y0 = _mm512_mask_add_ps(y0, ldmask(cq), y0, w0);
        if (nc == 4) {
            __m512 w1 = gk[1] == gk[0] ? w0 : _mm512_set1_ps(at[gk[1]]);
            x1 = _mm512_mask_add_ps(x1, ldmask(cp + 2), x1, w1);
            y1 = _mm512_mask_add_ps(y1, ldmask(cq + 2), y1, w1);
            __m512 w2 = _mm512_set1_ps(at[gk[2]]);
            x2 = _mm512_mask_add_ps(x2, ldmask(cp + 4), x2, w2);
            y2 = _mm512_mask_add_ps(y2, ldmask(cq + 4), y2, w2);
            __m512 w3 = gk[3] == gk[2] ? w2 : _mm512_set1_ps(at[gk[3]]);
            x3 = _mm512_mask_add_ps(x3, ldmask(cp + 6), x3, w3);
            y3 = _mm512_mask_add_ps(y3, ldmask(cq + 6), y3, w3);
        }
    }
    __m512 xs[4] = { x0, x1, x2, x3 }, ys[4] = { y0, y1, y2, y3 };
    for (int k = 0; k < nc; k++) { /* u += the 16 sums, in double (the conversions exact) */
        double *uc = u + 16 * (c0 + k);
        __m512 o = _mm512_add_ps(_mm512_add_ps(xs[k], _mm512_add_ps(ys[k], ys[k])), _mm512_set1_ps(Z[gk[k]]));
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(o)),
                hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(o), 1)));
        _mm512_storeu_pd(uc, _mm512_add_pd(_mm512_loadu_pd(uc), lo));
        _mm512_storeu_pd(uc + 8, _mm512_add_pd(_mm512_loadu_pd(uc + 8), hi));
    }
#else
    typedef float v16 __attribute__((vector_size(64)));
    typedef int v16i __attribute__((vector_size(64)));
    v16i bit;
    for (int i = 0; i < 16; i++) bit[i] = 1 << i;
    v16 p0[4], p1[4];
    int gk[4];
    for (int k = 0; k < nc; k++) {
        p0[k] = p1[k] = (v16){ 0 };
        gk[k] = 16 * (c0 + k) / gv;
    }
    for (int t = 0; t < nt; t++) {
        const uint8_t *cp = codes + (size_t)t * vcb;
        for (int k = 0; k < nc; k++) {
            int c = c0 + k;
            uint16_t b0, b1;
            memcpy(&b0, cp + 2 * c, 2);
            memcpy(&b1, cp + dv / 8 + 2 * c, 2);
            v16i at = (v16i)((v16){ 0 } + a[t * nvg + gk[k]]);
            p0[k] += (v16)(at & ((((v16i){ 0 } + b0) & bit) != 0));
            p1[k] += (v16)(at & ((((v16i){ 0 } + b1) & bit) != 0));
        }
    }
    for (int k = 0; k < nc; k++) {
        int c = c0 + k;
        v16 o = p0[k] + (p1[k] + p1[k]) + Z[16 * c / gv];
        for (int i = 0; i < 16; i++) u[16 * c + i] += o[i];
    }
#endif
}

void kv_qjl_fold_planes(double *r, float *s, int nt, int dv, int gv, const uint8_t *codes, const float *vz,
                        const float *vs, float *scratch)
{
    if (nt <= 0) return;
    int nvg = dv / gv, nch = dv / 16;
    size_t vcb = (size_t)dv / 4;
    kv_qexp_tile(r, s, nt, kv_qtile_max(s, nt), dv);
    float *a = scratch, *Z = a + (size_t)nt * nvg + KV_QVL;
    scales(s, nt, nvg, vz, vs, a, Z);
    double *u = r + KV_PS_U;
    int c0 = 0;
    for (; c0 + 4 <= nch; c0 += 4) chunks(u, codes, vcb, dv, gv, nvg, a, Z, nt, c0, 4);
    for (; c0 < nch; c0++) chunks(u, codes, vcb, dv, gv, nvg, a, Z, nt, c0, 1);
}
