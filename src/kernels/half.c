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

size_t kv_f32_to_half_exact(const float *x, size_t n, uint16_t *h)
{
    for (size_t i = 0; i < n; i++)
        if ((h[i] = f2h_exact(x[i])) == 0x7c00u) return i;
    return n;
}
