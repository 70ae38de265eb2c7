/* half.c - IEEE half <-> float32 arrays (half.h). */
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif
#include "kernels/half.h"

/* One finite half to float: the exponent and mantissa shifted into a float's,
 * times 2^112 (rebiases normal and subnormal halves alike, exactly). */
static inline float h2f(uint16_t h)
{
    uint32_t x = (uint32_t)(h & 0x7fffu) << 13, y;
    float f;
    memcpy(&f, &x, 4);
    f *= 0x1p112f;
    memcpy(&y, &f, 4);
    y |= (uint32_t)(h & 0x8000u) << 16;
    memcpy(&f, &y, 4);
    return f;
}

/* A finite float to the half of the same value, or 0x7c00 (inf, not a
 * finite half) when there is none: finite halves are exactly the floats
 * h2f maps to, so the candidate is taken by truncation and checked by the
 * way back. */
static inline uint16_t f2h_exact(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t ax = u & 0x7fffffffu, sign = (u >> 16) & 0x8000u;
    float a;
    memcpy(&a, &ax, 4);
    if (!(a <= 65504.0f)) return 0x7c00u; /* beyond half (or NaN) */
    a *= 0x1p-112f; /* exact for every half value (its mantissa fits) */
    uint32_t b;
    memcpy(&b, &a, 4);
    uint16_t h = (uint16_t)(sign | (b >> 13));
    return h2f(h) == f ? h : 0x7c00u;
}

void kv_half_to_f32(const uint16_t *h, size_t n, float *out)
{
    size_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
#endif
    for (; i < n; i++) out[i] = h2f(h[i]);
}

/* Vector blocks: the hardware rounding to nearest, kept when the way back
 * gives x again and |x| <= 65504 (an infinity or NaN fails one of the two);
 * for such x the nearest half is x itself, the bits f2h_exact gives.  A
 * block with a value that is not a half is left to the scalar loop, which
 * finds its index. */
size_t kv_f32_to_half_exact(const float *x, size_t n, uint16_t *h)
{
    size_t i = 0;
#if defined(__AVX512F__)
    const __m512 big = _mm512_set1_ps(65504.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m256i c = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __mmask16 ok = _mm512_cmp_ps_mask(_mm512_cvtph_ps(c), v, _CMP_EQ_OQ) &
                       _mm512_cmp_ps_mask(_mm512_abs_ps(v), big, _CMP_LE_OQ);
        if (ok != 0xffff) break;
        _mm256_storeu_si256((__m256i *)(h + i), c);
    }
#elif defined(__F16C__) && defined(__AVX__)
    const __m256 big = _mm256_set1_ps(65504.0f), sgn = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m128i c = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256 ok = _mm256_and_ps(_mm256_cmp_ps(_mm256_cvtph_ps(c), v, _CMP_EQ_OQ),
                                  _mm256_cmp_ps(_mm256_andnot_ps(sgn, v), big, _CMP_LE_OQ));
        if (_mm256_movemask_ps(ok) != 0xff) break;
        _mm_storeu_si128((__m128i *)(h + i), c);
    }
#endif
    for (; i < n; i++)
        if ((h[i] = f2h_exact(x[i])) == 0x7c00u) return i;
    return n;
}
