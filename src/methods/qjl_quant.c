/* qjl_quant.c - 2-bit values straight into bit planes (see qjl_quant.h). */
#include <math.h>
#include "methods/common/quant.h"
#include "methods/qjl_quant.h"
#if defined(__AVX512F__)
#include <immintrin.h>

/* kv_quantise's zero point and scale from the group's least and largest
 * value (its steps, in its order); -1 beyond half */
static int params(float lo, float hi, uint16_t *zs, float *z, float *s)
{
    const float L = 3.0f;
    uint16_t zh = kv_half_from_float(lo);
    *z = kv_half_to_float(zh);
    if (!isfinite(*z)) return -1;
    float sc = hi > *z ? (hi - *z) / L : 0.0f;
    uint16_t sh = kv_half_from_float(sc);
    while (kv_half_to_float(sh) < INFINITY && *z + kv_half_to_float(sh) * L < hi) sh++;
    *s = kv_half_to_float(sh);
    if (!isfinite(*s)) return -1;
    zs[0] = zh;
    zs[1] = sh;
    return 0;
}

/* the group's least and largest value; 1 if it holds a zero or a NaN (then
 * the scan's order could matter: kv_quantise keeps the first of equal
 * values, so -0 and +0 tie) */
static int range(const float *x, int n, float *lo, float *hi)
{
    __m512 mn = _mm512_loadu_ps(x), mx = mn;
    __mmask16 bad = 0;
    for (int i = 0; i < n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        bad |= _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_EQ_UQ); /* zero or unordered */
        mn = _mm512_min_ps(mn, v);
        mx = _mm512_max_ps(mx, v);
    }
    *lo = _mm512_reduce_min_ps(mn);
    *hi = _mm512_reduce_max_ps(mx);
    return bad != 0;
}

int kv_qjl_quant_planes(const float *v, int dv, int gv, uint16_t *bits, uint16_t *zs)
{
    for (int g = 0; g * gv < dv; g++) {
        const float *x = v + (size_t)g * gv;
        int nc = dv - g * gv < gv ? dv - g * gv : gv; /* a last group may be short (a multiple of 16) */
        float lo, hi, z, s;
        if (range(x, nc, &lo, &hi)) return 1;
        if (params(lo, hi, zs + 2 * g, &z, &s)) return -1;
        for (int c = 0; c < nc; c += 16) {
            uint16_t *b = bits + 2 * ((size_t)g * gv + c) / 16;
            if (!(s > 0)) { /* every code 0 */
                b[0] = b[1] = 0;
                continue;
            }
            /* rintf((x - z) / s), clamped to [0, 3]: as kv_quantise, lane-wise */
            __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_sub_ps(_mm512_loadu_ps(x + c), _mm512_set1_ps(z)),
                                                          _mm512_set1_ps(s)),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            __m512i u = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(q, _mm512_setzero_ps()), _mm512_set1_ps(3.0f)));
            b[0] = (uint16_t)_mm512_test_epi32_mask(u, _mm512_set1_epi32(1));
            b[1] = (uint16_t)_mm512_test_epi32_mask(u, _mm512_set1_epi32(2));
        }
    }
    return 0;
}
#else
int kv_qjl_quant_planes(const float *v, int dv, int gv, uint16_t *bits, uint16_t *zs)
{
    (void)v; (void)dv; (void)gv; (void)bits; (void)zs;
    return 1;
}
#endif
