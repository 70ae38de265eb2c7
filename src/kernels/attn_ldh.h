/* attn_ldh.h - 16 half values loaded as a vector of 16 floats (private to
 * kernels/attn.c): the few-query path converts half key and value rows in
 * registers as it reads them, instead of a whole tile into a float scratch
 * first (an extra write and read of 4 bytes per element, larger than L1 at
 * d = 128).  half -> float is exact, so the floats, and the arithmetic on
 * them, are those of the tile conversion (kv_half_to_f32). */
#ifndef KVSTREAM_ATTN_LDH_H
#define KVSTREAM_ATTN_LDH_H

#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif
#include "kernels/half.h"
#include "kernels/lanes16.h"

/* static inline, private to attn.c: no call crosses an ABI boundary (see attn.c) */
#pragma GCC diagnostic ignored "-Wpsabi"

static inline kv_v16 kv_ldh16(const uint16_t *p)
{
    kv_v16 v;
#if defined(__AVX512F__)
    __m256i x;
    memcpy(&x, p, sizeof x);
    __m512 f = _mm512_cvtph_ps(x);
    memcpy(&v, &f, sizeof v);
#elif defined(__F16C__)
    __m128i x0, x1;
    memcpy(&x0, p, sizeof x0);
    memcpy(&x1, p + 8, sizeof x1);
    __m256 f[2] = { _mm256_cvtph_ps(x0), _mm256_cvtph_ps(x1) };
    memcpy(&v, f, sizeof v);
#else
    float f[16];
    kv_half_to_f32(p, 16, f);
    memcpy(&v, f, sizeof v);
#endif
    return v;
}

#endif
