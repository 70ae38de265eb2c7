/* lanes16.h - 16-lane vectors and dot products in one fixed order.
 *
 * GNU C vector types of 16 floats and ints (AVX-512 with -march=native,
 * narrower correct code elsewhere; kernels/attn.c uses them too), and the
 * fixed-order kernels SubGen builds on (src/methods/subgen/): every result
 * is the same bits whatever the pointer alignment, the thread count, or
 * which of the batched or single forms computed it.  kv_dot_fixed
 * (kernels/dot.h) is the 8-lane order the other methods share; these keep
 * their own 16-lane order because SubGen's results and checkpoints were
 * defined with it.  Header-only: the kernels are inlined and specialised at
 * their call sites (kv_dot_blocks with a constant nk). */
#ifndef KVSTREAM_LANES16_H
#define KVSTREAM_LANES16_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define KV_L16 16      /* lanes */
#define KV_BLK_KEYS 4  /* kv_dot_blocks: keys per pass over a block */

typedef float kv_v16 __attribute__((vector_size(KV_L16 * sizeof(float))));
typedef int32_t kv_v16i __attribute__((vector_size(KV_L16 * sizeof(int32_t))));

/* Lane l of acc holds the elements i = l (mod 16); the lanes are added in a
 * fixed tree (constant trip counts: a few vector adds). */
static inline float kv_hsum16(float *acc)
{
    for (int l = 0; l < 8; l++) acc[l] += acc[l + 8];
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    for (int l = 0; l < 2; l++) acc[l] += acc[l + 2];
    return acc[0] + acc[1];
}

/* <a, b> in float, 16 lanes then kv_hsum16 */
static inline float kv_dot16(const float *restrict a, const float *restrict b, int d)
{
    float acc[KV_L16] = { 0 };
    int i = 0;
    for (; i + KV_L16 <= d; i += KV_L16) {
#pragma omp simd
        for (int l = 0; l < KV_L16; l++) acc[l] += a[i + l] * b[i + l];
    }
    for (int l = 0; i + l < d; l++) acc[l] += a[i + l] * b[i + l];
    return kv_hsum16(acc);
}

/* out[j] = <a, b_j> for four vectors b_j, each bitwise kv_dot16(a, b_j):
 * a is loaded once for all four */
static inline void kv_dot16x4(const float *restrict a, const float *restrict b0, const float *restrict b1,
                              const float *restrict b2, const float *restrict b3, int d, float *out)
{
    float c0[KV_L16] = { 0 }, c1[KV_L16] = { 0 }, c2[KV_L16] = { 0 }, c3[KV_L16] = { 0 };
    int i = 0;
    for (; i + KV_L16 <= d; i += KV_L16) {
#pragma omp simd
        for (int l = 0; l < KV_L16; l++) {
            float x = a[i + l];
            c0[l] += x * b0[i + l];
            c1[l] += x * b1[i + l];
            c2[l] += x * b2[i + l];
            c3[l] += x * b3[i + l];
        }
    }
    for (int l = 0; i + l < d; l++) {
        float x = a[i + l];
        c0[l] += x * b0[i + l];
        c1[l] += x * b1[i + l];
        c2[l] += x * b2[i + l];
        c3[l] += x * b3[i + l];
    }
    out[0] = kv_hsum16(c0);
    out[1] = kv_hsum16(c1);
    out[2] = kv_hsum16(c2);
    out[3] = kv_hsum16(c3);
}

/* |v|^2 in double (8 fixed lanes: vectorised, order fixed) */
static inline double kv_norm2_f64(const float *v, int d)
{
    double acc[8] = { 0 };
    int i = 0;
    for (; i + 8 <= d; i += 8) {
#pragma omp simd
        for (int l = 0; l < 8; l++) acc[l] += (double)v[i + l] * v[i + l];
    }
    for (int l = 0; i + l < d; l++) acc[l] += (double)v[i + l] * v[i + l];
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

/* |a - b|^2 in double, b strided (element i at b[i * stride]: a column of
 * a transposed block), 8 fixed lanes like kv_norm2_f64 */
static inline double kv_dist2_f64_strided(const float *a, const float *b, size_t stride, int d)
{
    double acc[8] = { 0 };
    int i = 0;
    for (; i + 8 <= d; i += 8)
        for (int l = 0; l < 8; l++) {
            double x = (double)a[i + l] - (double)b[(size_t)(i + l) * stride];
            acc[l] += x * x;
        }
    for (int l = 0; i + l < d; l++) {
        double x = (double)a[i + l] - (double)b[(size_t)(i + l) * stride];
        acc[l] += x * x;
    }
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

/* |a - b|^2 in double, one sequential sum */
static inline double kv_dist2_f64(const float *a, const float *b, int d)
{
    double s = 0;
    for (int i = 0; i < d; i++) {
        double x = (double)a[i] - (double)b[i];
        s += x * x;
    }
    return s;
}

/* first index of the smallest value (NaN never wins); -1 if none is finite */
static inline int64_t kv_argmin_first(const float *x, int64_t n)
{
    float mn = INFINITY;
#pragma omp simd reduction(min : mn)
    for (int64_t j = 0; j < n; j++) mn = x[j] < mn ? x[j] : mn;
    if (!(mn < INFINITY)) return -1;
    for (int64_t j = 0; j < n; j++)
        if (x[j] == mn) return j;
    return -1;
}

/* out[q][l] = <k_q, column l of blk> for nk <= KV_BLK_KEYS vectors k_q, blk
 * a transposed block (coordinate i of its 16 columns is row i of 16
 * floats).  Each (k_q, column) value is computed by the same operations
 * whatever nk is (four chains over i mod 4, then a fixed sum), so batching
 * never changes a result.  A block row is loaded once for all nk vectors:
 * with several, the pass is bound by multiply-adds instead of by L2
 * bandwidth.  Vector accumulators because GCC spilled plain arrays to the
 * stack. */
static inline __attribute__((always_inline)) void kv_dot_blocks(const float *restrict blk, const float *const *k,
                                                                int nk, int d, float *const *out)
{
    kv_v16 a[KV_BLK_KEYS][4], r;
    for (int q = 0; q < nk; q++)
        for (int c = 0; c < 4; c++) a[q][c] = (kv_v16){ 0 };
    int i = 0;
    for (; i + 4 <= d; i += 4)
        for (int c = 0; c < 4; c++) {
            memcpy(&r, blk + (size_t)(i + c) * KV_L16, sizeof r); /* unaligned load */
            for (int q = 0; q < nk; q++) a[q][c] += k[q][i + c] * r;
        }
    for (; i < d; i++) {
        memcpy(&r, blk + (size_t)i * KV_L16, sizeof r);
        for (int q = 0; q < nk; q++) a[q][0] += k[q][i] * r;
    }
    for (int q = 0; q < nk; q++) {
        r = (a[q][0] + a[q][1]) + (a[q][2] + a[q][3]);
        memcpy(out[q], &r, sizeof r);
    }
}

/* out[j] = <q, k_j> for nk <= 16 vectors k_j, each bitwise the lane of
 * kv_dot_blocks that pairs k_j with q (four chains over i mod 4, then
 * (a0 + a1) + (a2 + a3)): for one query, where kv_dot_blocks would fill
 * one lane of 16.  Here a vector's lanes are the 4 chains of 4 keys, so
 * each multiply-add still advances every chain by one step, in order. */
static inline void kv_dot_keys4(const float *restrict q, const float *const *k, int nk, int d, float *out)
{
    kv_v16 a[4], r;
    const float *kk[16];
    for (int j = 0; j < 16; j++) kk[j] = k[j < nk ? j : nk - 1]; /* pads repeat the last key */
    for (int g = 0; g < 4; g++) a[g] = (kv_v16){ 0 };
    int i = 0;
    for (; i + 4 <= d; i += 4) {
        float qb[KV_L16];
        for (int l = 0; l < KV_L16; l++) qb[l] = q[i + l % 4];
        memcpy(&r, qb, sizeof r);
        for (int g = 0; g < 4; g++) {
            kv_v16 x;
#if defined(__AVX512F__)
            __m512 y = _mm512_castps128_ps512(_mm_loadu_ps(kk[4 * g] + i));
            y = _mm512_insertf32x4(y, _mm_loadu_ps(kk[4 * g + 1] + i), 1);
            y = _mm512_insertf32x4(y, _mm_loadu_ps(kk[4 * g + 2] + i), 2);
            y = _mm512_insertf32x4(y, _mm_loadu_ps(kk[4 * g + 3] + i), 3);
            x = (kv_v16)y;
#else
            for (int j = 0; j < 4; j++) memcpy((float *)&x + 4 * j, kk[4 * g + j] + i, 4 * sizeof(float));
#endif
            a[g] += x * r;
        }
    }
    /* the tail into chain 0, as a 16-lane multiply-add like kv_dot_blocks'
     * (fused or not alike); the other chains get + 0 * -0 = -0: unchanged */
    for (; i < d; i++) {
        float qb[KV_L16];
        for (int l = 0; l < KV_L16; l++) qb[l] = l % 4 ? -0.0f : q[i];
        memcpy(&r, qb, sizeof r);
        for (int g = 0; g < 4; g++) {
            float xb[KV_L16] = { 0 };
            for (int j = 0; j < 4; j++) xb[4 * j] = kk[4 * g + j][i];
            kv_v16 x;
            memcpy(&x, xb, sizeof x);
            a[g] += x * r;
        }
    }
    float f[4][KV_L16];
    for (int g = 0; g < 4; g++) memcpy(f[g], &a[g], sizeof f[g]);
    for (int j = 0; j < nk; j++) {
        const float *c = f[j / 4] + 4 * (j % 4);
        out[j] = (c[0] + c[1]) + (c[2] + c[3]);
    }
}

#endif
