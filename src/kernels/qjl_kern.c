/* qjl_kern.c - QJL's projection and sign-sum kernels (see qjl_kern.h). */
#include <math.h>
#include <string.h>
#include "kernels/dot.h"
#include "kernels/qattn.h"
#include "kernels/qjl_kern.h"
#include "kernels/vshuf.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Every function taking or returning these vectors is static to this file. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vf __attribute__((vector_size(4 * KV_QVL)));
typedef int vi __attribute__((vector_size(4 * KV_QVL)));
typedef unsigned vu __attribute__((vector_size(4 * KV_QVL)));
typedef uint16_t vh __attribute__((vector_size(2 * KV_QVL)));
typedef uint8_t vb __attribute__((vector_size(KV_QVL)));

void kv_qjl_sig_put(uint8_t *sig, int mb, int64_t t, const uint8_t *row)
{
    if (t % KV_QJL_KB == 0) memset(sig + kv_qjl_sig_off(mb, t, 0), 0, (size_t)KV_QJL_KB * (size_t)mb);
    for (int j = 0; j < mb; j++) sig[kv_qjl_sig_off(mb, t, j)] = row[j];
}

void kv_qjl_sig_get(const uint8_t *sig, int mb, int64_t t, uint8_t *row)
{
    for (int j = 0; j < mb; j++) row[j] = sig[kv_qjl_sig_off(mb, t, j)];
}

/* cnt nibbles of each lane's word w (nibble n0 + x in bits 4x..4x+3) looked
 * up in their tables: the shuffle reads the index's low 4 bits, so no mask;
 * nibble n into chain n mod 2, as kv_qsigns does */
static inline void nibbles(const float *T, vu w, int n0, int cnt, vf *a0, vf *a1)
{
    for (int x = 0; x < cnt; x++) {
        const float *t = T + (size_t)(n0 + x) * 16;
        vi idx = (vi)(w >> (4 * x));
        vf lo, v;
        memcpy(&lo, t, sizeof lo);
#if KV_QVL == 16
        v = KV_SHUF1(lo, idx);
#else
        vf hi;
        memcpy(&hi, t + 8, sizeof hi);
        v = KV_SHUF2(lo, hi, idx);
#endif
        if ((n0 + x) & 1) *a1 += v;
        else *a0 += v;
    }
}

/* lanes h KV_QVL .. of a 16-key block's sign sums */
static inline void block_part(const float *T, const uint8_t *blk, int mb, int h, float *S)
{
    vf a0 = { 0 }, a1 = { 0 };
    int w4 = mb / 4 * 4;
    const uint8_t *p = blk;
    for (int j = 0; j < w4; j += 4, p += 4 * KV_QJL_KB) {
        vu w;
        memcpy(&w, p + (size_t)h * 4 * KV_QVL, sizeof w);
        nibbles(T, w, 2 * j, 8, &a0, &a1);
    }
    if (mb - w4 >= 2) {
        vh x;
        memcpy(&x, p + (size_t)h * 2 * KV_QVL, sizeof x);
        nibbles(T, __builtin_convertvector(x, vu), 2 * w4, 4, &a0, &a1);
        p += 2 * KV_QJL_KB;
        w4 += 2;
    }
    if (mb > w4) {
        vb x;
        memcpy(&x, p + (size_t)h * KV_QVL, sizeof x);
        nibbles(T, __builtin_convertvector(x, vu), 2 * w4, 2, &a0, &a1);
    }
    vf r = a0 + a1;
    memcpy(S, &r, sizeof r);
}

void kv_qjl_signs(const float *T, const uint8_t *sig, int mb, int nt, float *S)
{
    for (int b = 0; b * KV_QJL_KB < nt; b++)
        for (int h = 0; h < KV_QJL_KB / KV_QVL; h++)
            block_part(T, sig + (size_t)b * KV_QJL_KB * (size_t)mb, mb, h, S + b * KV_QJL_KB + h * KV_QVL);
}

void kv_qjl_row_put(float *ST, int m, int d, int j, const float *row)
{
    int j0 = j / KV_QJL_RB * KV_QJL_RB, w = m - j0 < KV_QJL_RB ? m - j0 : KV_QJL_RB;
    float *B = ST + (size_t)j0 * d;
    for (int c = 0; c < d; c++) B[(size_t)c * w + (j - j0)] = row[c];
}

/* 8 rows (block B, column-major) dotted with one key x: element c into
 * accumulator c mod 8 in order, then kv_dot_tree's adds lane-wise (kv_madd8:
 * kv_dot_fixed's multiply-adds) */
static void dots8(const float *B, int d, const float *x, float *out)
{
    kv_dot_v8 acc[8], s, k;
    for (int i = 0; i < 8; i++) acc[i] = (kv_dot_v8){ 0 };
    int c = 0;
    for (; c + 8 <= d; c += 8) /* unrolled: the accumulators stay in registers */
        for (int i = 0; i < 8; i++) {
            memcpy(&s, B + (size_t)(c + i) * 8, sizeof s);
            k = (kv_dot_v8){ 0 } + x[c + i];
            kv_madd8(&acc[i], &s, &k);
        }
    for (int i = 0; c + i < d; i++) {
        memcpy(&s, B + (size_t)(c + i) * 8, sizeof s);
        k = (kv_dot_v8){ 0 } + x[c + i];
        kv_madd8(&acc[i], &s, &k);
    }
    kv_dot_v8 r = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    memcpy(out, &r, sizeof r);
}

#if KV_QJL_RB == 16
/* 16 rows with NT keys per pass over the block (NT constant: 8 NT
 * accumulators in registers), dots8's order per lane */
static inline __attribute__((always_inline)) void dots16(const float *B, int d, const float *const *x, int m,
                                                         float *out, const int NT)
{
    __m512 acc[2][8];
    for (int t = 0; t < NT; t++)
        for (int i = 0; i < 8; i++) acc[t][i] = _mm512_setzero_ps();
    int c = 0;
    for (; c + 8 <= d; c += 8)
        for (int i = 0; i < 8; i++) {
            __m512 s = _mm512_loadu_ps(B + (size_t)(c + i) * 16);
            for (int t = 0; t < NT; t++) acc[t][i] = _mm512_fmadd_ps(s, _mm512_set1_ps(x[t][c + i]), acc[t][i]);
        }
    for (int i = 0; c + i < d; i++) {
        __m512 s = _mm512_loadu_ps(B + (size_t)(c + i) * 16);
        for (int t = 0; t < NT; t++) acc[t][i] = _mm512_fmadd_ps(s, _mm512_set1_ps(x[t][c + i]), acc[t][i]);
    }
    for (int t = 0; t < NT; t++) {
        __m512 h0 = _mm512_add_ps(acc[t][0], acc[t][4]), h1 = _mm512_add_ps(acc[t][1], acc[t][5]),
               h2 = _mm512_add_ps(acc[t][2], acc[t][6]), h3 = _mm512_add_ps(acc[t][3], acc[t][7]);
        _mm512_storeu_ps(out + (size_t)t * m, _mm512_add_ps(_mm512_add_ps(h0, h1), _mm512_add_ps(h2, h3)));
    }
}
#endif

void kv_qjl_dots(const float *ST, int m, int d, const float *const *x, int nt, float *out)
{
    for (int j0 = 0; j0 < m; j0 += KV_QJL_RB) {
        const float *B = ST + (size_t)j0 * d;
        int t = 0;
#if KV_QJL_RB == 16
        if (m - j0 >= 16) {
            for (; t + 2 <= nt; t += 2) dots16(B, d, x + t, m, out + (size_t)t * m + j0, 2);
            for (; t < nt; t++) dots16(B, d, x + t, m, out + (size_t)t * m + j0, 1);
            continue;
        }
#endif
        for (; t < nt; t++) dots8(B, d, x[t], out + (size_t)t * m + j0);
    }
}

void kv_qjl_pack_signs(const float *dots, int m, uint8_t *sg)
{
    int j0 = 0;
#if defined(__AVX512F__)
    for (; j0 + 16 <= m; j0 += 16) { /* >= 0, ordered: as the scalar test (NaN: 0) */
        unsigned k = _mm512_cmp_ps_mask(_mm512_loadu_ps(dots + j0), _mm512_setzero_ps(), _CMP_GE_OQ);
        sg[j0 >> 3] = (uint8_t)k;
        sg[(j0 >> 3) + 1] = (uint8_t)(k >> 8);
    }
#endif
    for (; j0 < m; j0 += 8) {
        unsigned bits = 0;
        for (int j = 0; j < 8; j++) bits |= (unsigned)(dots[j0 + j] >= 0) << j;
        sg[j0 >> 3] = (uint8_t)bits;
    }
}

void kv_qjl_norms(const float *const *k, int nt, int d, float *out)
{
    double nn[8] = { 0 };
    for (int t0 = 0; t0 < nt; t0 += 8) {
        int n = nt - t0 < 8 ? nt - t0 : 8;
        for (int t = 0; t < 8; t++) nn[t] = 0;
        for (int x = 0; x < d; x++) /* n independent chains, each in x order */
            for (int t = 0; t < n; t++) nn[t] += (double)k[t0 + t][x] * k[t0 + t][x];
        for (int t = 0; t < n; t++) out[t0 + t] = (float)sqrt(nn[t]);
    }
}
