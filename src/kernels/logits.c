/* logits.c - see logits.h.  Key-major rows are transposed 8 x 8 at a time
 * (AVX shuffles where the build has them); the logits keep 8 accumulator
 * vectors per 16 keys, one per lane of kv_dot_fixed. */
#include <string.h>
#include "kernels/dot.h"
#include "kernels/logits.h"
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float lt_v16 __attribute__((vector_size(16 * sizeof(float))));

/* *c += a * *b lane by lane, fused exactly as kv_madd8 (the same bits) */
static inline void madd16(lt_v16 *c, const lt_v16 *a, const float *b)
{
    lt_v16 y;
    memcpy(&y, b, sizeof y);
#if defined(__AVX512F__) && defined(__FMA__)
    *c = (lt_v16)_mm512_fmadd_ps((__m512)*a, (__m512)y, (__m512)*c);
#else
    kv_dot_v8 h[2], x[2], z[2];
    memcpy(h, c, sizeof h);
    memcpy(x, a, sizeof x);
    memcpy(z, &y, sizeof z);
    kv_madd8(&h[0], &x[0], &z[0]);
    kv_madd8(&h[1], &x[1], &z[1]);
    memcpy(c, h, sizeof h);
#endif
}

#if defined(__AVX__)
/* out[j ldo + i] = in[i ldi + j], i, j < 8 */
static inline void tr8(const float *in, size_t ldi, float *out, size_t ldo)
{
    __m256 r[8], t[8], s[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(in + i * ldi);
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        s[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        _mm256_storeu_ps(out + i * ldo, _mm256_permute2f128_ps(s[i], s[i + 4], 0x20));
        _mm256_storeu_ps(out + (i + 4) * ldo, _mm256_permute2f128_ps(s[i], s[i + 4], 0x31));
    }
}
#else
static inline void tr8(const float *in, size_t ldi, float *out, size_t ldo)
{
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++) out[j * ldo + i] = in[i * ldi + j];
}
#endif

void kv_lt_pack(const float *K, size_t nt, int d, float *KT)
{
    if (nt < KV_LT) { /* a partial tile: element by element, zeros after */
        for (int c = 0; c < d; c++)
            for (size_t t = 0; t < KV_LT; t++) KT[(size_t)c * KV_LT + t] = t < nt ? K[t * (size_t)d + c] : 0.0f;
        return;
    }
    /* the next tile's rows on their way (a batch packs tiles in order) */
    for (size_t o = 0; o < KV_LT * (size_t)d; o += 16) __builtin_prefetch(K + KV_LT * (size_t)d + o);
    int c = 0;
    for (; c + 8 <= d; c += 8)
        for (size_t t = 0; t < KV_LT; t += 8) tr8(K + t * (size_t)d + c, (size_t)d, KT + (size_t)c * KV_LT + t, KV_LT);
    for (; c < d; c++)
        for (size_t t = 0; t < KV_LT; t++) KT[(size_t)c * KV_LT + t] = K[t * (size_t)d + c];
}

static inline void bcast(lt_v16 *b, float x)
{
    for (int i = 0; i < 16; i++) (*b)[i] = x;
}

/* lane j (mod 8) of the keys' chains takes channel c of KT */
#define LANE(j, c)                                                        \
    do {                                                                  \
        lt_v16 b_;                                                        \
        bcast(&b_, q[c]);                                                 \
        madd16(&acc[j][0], &b_, KT + (size_t)(c) * KV_LT);                \
        madd16(&acc[j][1], &b_, KT + (size_t)(c) * KV_LT + 16);           \
    } while (0)

static float logits_any(const float *q, const float *KT, int d, float scale, float *out)
{
    lt_v16 acc[8][2];
    for (int j = 0; j < 8; j++) acc[j][0] = acc[j][1] = (lt_v16){ 0 };
    int c = 0;
    for (; c + 8 <= d; c += 8) { /* lane j: elements c = j (mod 8), in order */
        LANE(0, c); LANE(1, c + 1); LANE(2, c + 2); LANE(3, c + 3);
        LANE(4, c + 4); LANE(5, c + 5); LANE(6, c + 6); LANE(7, c + 7);
    }
    int r = d - c; /* the tail: element c + j into lane j (constant lanes: registers) */
    if (r > 0) LANE(0, c);
    if (r > 1) LANE(1, c + 1);
    if (r > 2) LANE(2, c + 2);
    if (r > 3) LANE(3, c + 3);
    if (r > 4) LANE(4, c + 4);
    if (r > 5) LANE(5, c + 5);
    if (r > 6) LANE(6, c + 6);
    lt_v16 r2[2];
    for (int v = 0; v < 2; v++) { /* kv_dot_tree: h_i = a_i + a_(i+4), (h0 + h1) + (h2 + h3) */
        lt_v16 h0 = acc[0][v] + acc[4][v], h1 = acc[1][v] + acc[5][v], h2 = acc[2][v] + acc[6][v],
               h3 = acc[3][v] + acc[7][v];
        r2[v] = ((h0 + h1) + (h2 + h3)) * scale;
        memcpy(out + 16 * v, &r2[v], sizeof r2[v]);
    }
    float m[16]; /* their max: lanes, then across */
    for (int i = 0; i < 16; i++) m[i] = r2[0][i] > r2[1][i] ? r2[0][i] : r2[1][i];
    for (int w = 8; w; w /= 2)
        for (int i = 0; i < w; i++) m[i] = m[i] > m[i + w] ? m[i] : m[i + w];
    return m[0];
}

#if defined(__AVX512F__)
/* d a multiple of 8 on AVX-512: the same lanes and tree, every accumulator
 * in a register (a0..a7: keys 0-15, b0..b7: keys 16-31) */
#define LANE512(j, c)                                                                   \
    do {                                                                                \
        __m512 q_ = _mm512_set1_ps(q[c]);                                               \
        a##j = _mm512_fmadd_ps(q_, _mm512_loadu_ps(KT + (size_t)(c) * KV_LT), a##j);     \
        b##j = _mm512_fmadd_ps(q_, _mm512_loadu_ps(KT + (size_t)(c) * KV_LT + 16), b##j); \
    } while (0)

static float logits512(const float *q, const float *KT, int d, float scale, float *out)
{
    __m512 a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, b2, b3, b4, b5, b6, b7;
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 8) {
        LANE512(0, c); LANE512(1, c + 1); LANE512(2, c + 2); LANE512(3, c + 3);
        LANE512(4, c + 4); LANE512(5, c + 5); LANE512(6, c + 6); LANE512(7, c + 7);
    }
    __m512 s = _mm512_set1_ps(scale);
    __m512 ra = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a4), _mm512_add_ps(a1, a5)),
                              _mm512_add_ps(_mm512_add_ps(a2, a6), _mm512_add_ps(a3, a7)));
    __m512 rb = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(b0, b4), _mm512_add_ps(b1, b5)),
                              _mm512_add_ps(_mm512_add_ps(b2, b6), _mm512_add_ps(b3, b7)));
    ra = _mm512_mul_ps(ra, s);
    rb = _mm512_mul_ps(rb, s);
    _mm512_storeu_ps(out, ra);
    _mm512_storeu_ps(out + 16, rb);
    return _mm512_reduce_max_ps(_mm512_max_ps(ra, rb));
}
#endif

float kv_lt_logits(const float *q, const float *KT, int d, float scale, float *out)
{
#if defined(__AVX512F__)
    if (d % 8 == 0) return logits512(q, KT, d, scale, out);
#endif
    return logits_any(q, KT, d, scale, out);
}
