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

/* token t's code bits: channel c's dword in its block (qjl_kern.h) */
static inline uint8_t *lane_word(uint8_t *vq, int dv, int64_t t, int c)
{
    return vq + (size_t)(t / KV_QJL_KB) * 4 * (size_t)dv + 64 * (size_t)(c / 16) + 4 * (size_t)(c % 16);
}

void kv_qjl_planes_put(const uint8_t *packed, int dv, uint8_t *vq, int64_t t)
{
    int l = (int)(t % KV_QJL_KB);
    if (l == 0) memset(lane_word(vq, dv, t, 0), 0, 4 * (size_t)dv);
    for (int c0 = 0; c0 < dv; c0 += 16) { /* a chunk: 16 codes (4 bytes) into its 16 words, lane by lane */
        uint32_t w[16], p;
        uint8_t *q = lane_word(vq, dv, t, c0);
        memcpy(w, q, sizeof w);
        p = (uint32_t)packed[c0 / 4] | (uint32_t)packed[c0 / 4 + 1] << 8 | (uint32_t)packed[c0 / 4 + 2] << 16 |
            (uint32_t)packed[c0 / 4 + 3] << 24;
        for (int i = 0; i < 16; i++) {
            uint32_t code = p >> (2 * i) & 3u;
            w[i] |= (code & 1u) << l | (code >> 1) << (16 + l);
        }
        memcpy(q, w, sizeof w);
    }
}

void kv_qjl_planes_or(const uint16_t *bits, int dv, uint8_t *vq, int64_t t)
{
    int l = (int)(t % KV_QJL_KB);
    if (l == 0) memset(lane_word(vq, dv, t, 0), 0, 4 * (size_t)dv);
    for (int c0 = 0; c0 < dv; c0 += 16) {
        uint32_t w[16], b0 = bits[c0 / 8], b1 = bits[c0 / 8 + 1];
        uint8_t *q = lane_word(vq, dv, t, c0);
        memcpy(w, q, sizeof w);
        for (int i = 0; i < 16; i++) w[i] |= (b0 >> i & 1u) << l | (b1 >> i & 1u) << (16 + l);
        memcpy(q, w, sizeof w);
    }
}

void kv_qjl_planes_get(const uint8_t *vq, int dv, int64_t t, uint8_t *packed)
{
    int l = (int)(t % KV_QJL_KB);
    memset(packed, 0, (size_t)dv / 4);
    for (int c = 0; c < dv; c++) {
        uint32_t w;
        memcpy(&w, lane_word((uint8_t *)vq, dv, t, c), 4);
        unsigned code = (w >> l & 1u) | (w >> (16 + l) & 1u) << 1;
        packed[c >> 2] |= (uint8_t)(code << (2 * (c & 3)));
    }
}

void kv_qjl_planes_from_rows(uint8_t *vq, int dv, int64_t n)
{
    uint8_t rows[KV_QJL_KB * 256]; /* dv / 4 <= 256 */
    size_t vcb = (size_t)dv / 4;
    for (int64_t b = 0; b < n; b += KV_QJL_KB) {
        int64_t nb = n - b < KV_QJL_KB ? n - b : KV_QJL_KB;
        memcpy(rows, vq + (size_t)b * vcb, (size_t)nb * vcb);
        for (int64_t t = 0; t < nb; t++) kv_qjl_planes_put(rows + (size_t)t * vcb, dv, vq, b + t);
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
/* the subset sums of a quad's weights q[i nvg] (i < 4): lane j = the sum,
 * in token order, of those whose bit is set in j (products by 0 or 1:
 * exact, so each fused step rounds only the sum) */
static inline __m512 quad_table(const float *q, int nvg)
{
    const __m512 m0 = _mm512_castsi512_ps(_mm512_setr_epi32(0, 0x3f800000, 0, 0x3f800000, 0, 0x3f800000, 0,
                                                            0x3f800000, 0, 0x3f800000, 0, 0x3f800000, 0,
                                                            0x3f800000, 0, 0x3f800000));
    const __m512 m1 = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1), m0),
                 m2 = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1), m0),
                 m3 = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), m0);
    __m512 T = _mm512_mul_ps(_mm512_set1_ps(q[0]), m0);
    T = _mm512_fmadd_ps(_mm512_set1_ps(q[nvg]), m1, T);
    T = _mm512_fmadd_ps(_mm512_set1_ps(q[2 * nvg]), m2, T);
    return _mm512_fmadd_ps(_mm512_set1_ps(q[3 * nvg]), m3, T);
}
#endif

/* 16-channel chunks c0 .. c0 + nc (nc <= 4) over the tile's blocks: per
 * quad of tokens, per plane, the chunk's lanes look their quad's nibble up
 * in the quad's table and add it (plane sums p0, p1 in token-quad order),
 * then U = p0 + 2 p1 + Z into u (doubles) */
static inline __attribute__((always_inline)) void chunks(double *u, const uint8_t *codes, int dv, int gv, int nvg,
                                                         const float *a, const float *Z, int nt, int c0, const int nc)
{
    int gk[4];
    for (int k = 0; k < nc; k++) gk[k] = 16 * (c0 + k) / gv;
    int nb = (nt + KV_QJL_KB - 1) / KV_QJL_KB;
#if defined(__AVX512F__)
    __m512 x[4], y[4];
    for (int k = 0; k < nc; k++) x[k] = y[k] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = codes + (size_t)b * 4 * (size_t)dv + 64 * (size_t)c0;
        const float *ab = a + (size_t)b * KV_QJL_KB * nvg;
        __m512i w[4];
        for (int k = 0; k < nc; k++) w[k] = _mm512_loadu_si512(blk + 64 * k);
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) {
            __m512 T[4];
            for (int k = 0; k < nc; k++)
                T[k] = k && gk[k] == gk[k - 1] ? T[k - 1] : quad_table(ab + (size_t)4 * q * nvg + gk[k], nvg);
            for (int k = 0; k < nc; k++) {
                x[k] = _mm512_add_ps(x[k], _mm512_permutexvar_ps(_mm512_srli_epi32(w[k], 4 * q), T[k]));
                y[k] = _mm512_add_ps(y[k], _mm512_permutexvar_ps(_mm512_srli_epi32(w[k], 16 + 4 * q), T[k]));
            }
        }
    }
    for (int k = 0; k < nc; k++) { /* u += the 16 sums, in double (the conversions exact) */
        double *uc = u + 16 * (c0 + k);
        __m512 o = _mm512_add_ps(_mm512_add_ps(x[k], _mm512_add_ps(y[k], y[k])), _mm512_set1_ps(Z[gk[k]]));
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(o)),
                hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(o), 1)));
        _mm512_storeu_pd(uc, _mm512_add_pd(_mm512_loadu_pd(uc), lo));
        _mm512_storeu_pd(uc + 8, _mm512_add_pd(_mm512_loadu_pd(uc + 8), hi));
    }
#else
    float x[4][16], y[4][16], T[16];
    for (int k = 0; k < nc; k++)
        for (int i = 0; i < 16; i++) x[k][i] = y[k][i] = 0;
    for (int b = 0; b < nb; b++)
        for (int q = 0; q < 4; q++)
            for (int k = 0; k < nc; k++) {
                const float *aq = a + ((size_t)b * KV_QJL_KB + 4 * (size_t)q) * nvg + gk[k];
                for (int j = 0; j < 16; j++) { /* quad_table's steps: exact products, one rounding each */
                    float v = aq[0] * (float)(j & 1);
                    for (int i = 1; i < 4; i++) v = v + aq[(size_t)i * nvg] * (float)(j >> i & 1);
                    T[j] = v;
                }
                const uint8_t *lw = codes + (size_t)b * 4 * (size_t)dv + 64 * (size_t)(c0 + k);
                for (int i = 0; i < 16; i++) {
                    uint32_t w;
                    memcpy(&w, lw + 4 * i, 4);
                    x[k][i] += T[w >> (4 * q) & 15];
                    y[k][i] += T[w >> (16 + 4 * q) & 15];
                }
            }
    for (int k = 0; k < nc; k++)
        for (int i = 0; i < 16; i++) u[16 * (c0 + k) + i] += x[k][i] + (y[k][i] + y[k][i]) + Z[gk[k]];
#endif
}

void kv_qjl_fold_planes(double *r, float *s, int nt, int dv, int gv, const uint8_t *codes, const float *vz,
                        const float *vs, float *scratch)
{
    if (nt <= 0) return;
    int nvg = (dv + gv - 1) / gv, nch = dv / 16, ntb = (nt + KV_QJL_KB - 1) / KV_QJL_KB * KV_QJL_KB;
    kv_qexp_tile(r, s, nt, kv_qtile_max(s, nt), dv);
    float *a = scratch, *Z = a + (size_t)ntb * nvg + KV_QVL;
    scales(s, nt, nvg, vz, vs, a, Z);
    memset(a + (size_t)nt * nvg, 0, sizeof(float) * (size_t)(ntb - nt) * nvg); /* a last block's missing tokens */
    double *u = r + KV_PS_U;
    int c0 = 0;
    for (; c0 + 4 <= nch; c0 += 4) chunks(u, codes, dv, gv, nvg, a, Z, nt, c0, 4);
    for (; c0 < nch; c0++) chunks(u, codes, dv, gv, nvg, a, Z, nt, c0, 1);
}
