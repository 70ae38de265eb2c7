/* logits.c - see logits.h.  Key-major rows are transposed 8 x 8 at a time
 * (AVX shuffles where the build has them); the logits run kv_dot_fixed's
 * lanes one at a time for a block of queries and keys (below). */
#include <math.h>
#include <string.h>
#include "kernels/dot.h"
#include "kernels/logits.h"
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

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
    int c = 0;
    for (; c + 8 <= d; c += 8)
        for (size_t t = 0; t < KV_LT; t += 8) tr8(K + t * (size_t)d + c, (size_t)d, KT + (size_t)c * KV_LT + t, KV_LT);
    for (; c < d; c++)
        for (size_t t = 0; t < KV_LT; t++) KT[(size_t)c * KV_LT + t] = K[t * (size_t)d + c];
}

/* The logits of up to KV_LQ queries against one packed tile.  Each lane j
 * of kv_dot_fixed is the chain of channels c = j, j + 8, ... (c < d: the
 * tail's element c + i goes to lane i = c mod 8 too) in order from 0, so
 * the kernel runs one lane at a time over a register block of queries x
 * key vectors: a key vector loaded once feeds every query of the block and
 * a broadcast q[c] every key vector, which keeps the loads below the FMAs
 * (the one-query kernel loaded 1.5 per FMA).  The lanes' sums wait in
 * scratch for the fixed tree, vector-wise over the keys. */
#if defined(__AVX512F__) && defined(__FMA__)
typedef float lt_v __attribute__((vector_size(16 * sizeof(float))));
typedef int lt_vi __attribute__((vector_size(16 * sizeof(int))));
#define LT_VW 16 /* floats per vector */
#define LT_QB 6  /* queries per register block: 6 x 2 accumulators of 32 registers */
static inline void lt_fma(lt_v *c, const lt_v *a, const lt_v *b)
{
    *c = (lt_v)_mm512_fmadd_ps((__m512)*a, (__m512)*b, (__m512)*c);
}
#else
typedef kv_dot_v8 lt_v;
typedef int lt_vi __attribute__((vector_size(8 * sizeof(int))));
#define LT_VW 8
#define LT_QB 2 /* 2 x 2 accumulators of 16 registers */
static inline void lt_fma(lt_v *c, const lt_v *a, const lt_v *b)
{
    kv_madd8(c, a, b); /* fused exactly where kv_dot_fixed's are */
}
#endif
/* x in every lane (not 0 + x: that would turn -0 into +0) */
static inline lt_v lt_bcast(float x)
{
#if defined(__AVX512F__) && defined(__FMA__)
    return (lt_v)_mm512_set1_ps(x);
#elif defined(__AVX__)
    return (lt_v)_mm256_set1_ps(x);
#else
    lt_v b;
    for (int i = 0; i < LT_VW; i++) b[i] = x;
    return b;
#endif
}

#define LT_KB 2 /* key vectors per register block */
#define LT_NV (KV_LT / LT_VW)
#define LT_SS (KV_LT + 16) /* scratch floats per lane: rows 64 bytes off the tile's 256-byte grid */

_Static_assert(LT_NV % LT_KB == 0, "a tile is whole register blocks");
_Static_assert(KV_LQ % LT_QB == 0 || KV_LQ < LT_QB, "a call of KV_LQ queries is whole blocks");

/* S[(i 8 + j) LT_SS + t] = lane j's sum of query i with key t, i < nq
 * (a constant at each inlined copy: the block stays in registers) */
static inline __attribute__((always_inline)) void lanes(const float *const *q, int nq, const float *KT, int d,
                                                        float *S)
{
    for (int v0 = 0; v0 < LT_NV; v0 += LT_KB)
        for (int j = 0; j < 8; j++) {
            lt_v acc[LT_QB][LT_KB];
#pragma GCC unroll 8
            for (int i = 0; i < nq; i++)
#pragma GCC unroll 8
                for (int v = 0; v < LT_KB; v++) acc[i][v] = (lt_v){ 0 };
            for (int c = j; c < d; c += 8) {
                lt_v k[LT_KB];
#pragma GCC unroll 8
                for (int v = 0; v < LT_KB; v++) memcpy(&k[v], KT + (size_t)c * KV_LT + (v0 + v) * LT_VW, sizeof k[v]);
#pragma GCC unroll 8
                for (int i = 0; i < nq; i++) {
                    lt_v b = lt_bcast(q[i][c]);
#pragma GCC unroll 8
                    for (int v = 0; v < LT_KB; v++) lt_fma(&acc[i][v], &b, &k[v]);
                }
            }
#pragma GCC unroll 8
            for (int i = 0; i < nq; i++)
#pragma GCC unroll 8
                for (int v = 0; v < LT_KB; v++)
                    memcpy(S + (size_t)(i * 8 + j) * LT_SS + (v0 + v) * LT_VW, &acc[i][v], sizeof acc[i][v]);
        }
}

static __attribute__((noinline)) void lanes_n(const float *const *q, int nq, const float *KT, int d, float *S)
{
    switch (nq) { /* one copy per block size, each with its accumulators in registers */
#if LT_QB >= 6
    case 6: lanes(q, 6, KT, d, S); break;
    case 5: lanes(q, 5, KT, d, S); break;
    case 4: lanes(q, 4, KT, d, S); break;
    case 3: lanes(q, 3, KT, d, S); break;
#endif
    case 2: lanes(q, 2, KT, d, S); break;
    default: lanes(q, 1, KT, d, S); break;
    }
}

static inline lt_v lt_ld(const float *p)
{
    lt_v x;
    memcpy(&x, p, sizeof x);
    return x;
}

/* the largest lane (finite values) */
static inline float lt_hmax(lt_v m)
{
#if defined(__AVX512F__) && defined(__FMA__)
    return _mm512_reduce_max_ps((__m512)m);
#else
    float x = m[0];
    for (int i = 1; i < LT_VW; i++) x = m[i] > x ? m[i] : x;
    return x;
#endif
}

/* kv_dot_tree over the lanes, key-wise: ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)), times scale */
static float tree(const float *S, float scale, float *out)
{
    lt_v m = lt_bcast(-INFINITY);
    for (int v = 0; v < LT_NV; v++) {
        const float *a = S + v * LT_VW;
        lt_v r = ((lt_ld(a) + lt_ld(a + 4 * LT_SS)) + (lt_ld(a + LT_SS) + lt_ld(a + 5 * LT_SS))) +
                 ((lt_ld(a + 2 * LT_SS) + lt_ld(a + 6 * LT_SS)) + (lt_ld(a + 3 * LT_SS) + lt_ld(a + 7 * LT_SS)));
        r *= scale;
        memcpy(out + v * LT_VW, &r, sizeof r);
        lt_vi gt = r > m; /* lane-wise r > m ? r : m */
        m = (lt_v)(((lt_vi)r & gt) | ((lt_vi)m & ~gt));
    }
    return lt_hmax(m);
}

void kv_lt_logits_q(const float *const *q, int nq, const float *KT, int d, float scale, float *out, float *top)
{
    float S[LT_QB * 8 * LT_SS] __attribute__((aligned(64)));
    for (int q0 = 0; q0 < nq; q0 += LT_QB) {
        int nb = nq - q0 < LT_QB ? nq - q0 : LT_QB;
        lanes_n(q + q0, nb, KT, d, S);
        for (int i = 0; i < nb; i++)
            top[q0 + i] = tree(S + (size_t)i * 8 * LT_SS, scale, out + (size_t)(q0 + i) * KV_LT);
    }
}

float kv_lt_logits(const float *q, const float *KT, int d, float scale, float *out)
{
    float top;
    kv_lt_logits_q(&q, 1, KT, d, scale, out, &top);
    return top;
}
