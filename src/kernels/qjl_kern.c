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

/* lanes h KV_QVL .. of NB 16-key blocks' sign sums (blocks blk + i bs),
 * each block's two chains apart: NB blocks give 2 NB chains in flight */
static inline __attribute__((always_inline)) void block_part(const float *T, const uint8_t *blk, size_t bs, int mb,
                                                             int h, float *S, const int NB)
{
    vf a0[2] = { { 0 }, { 0 } }, a1[2] = { { 0 }, { 0 } };
    int w4 = mb / 4 * 4;
    const uint8_t *p = blk;
    for (int j = 0; j < w4; j += 4, p += 4 * KV_QJL_KB)
        for (int i = 0; i < NB; i++) {
            vu w;
            memcpy(&w, p + i * bs + (size_t)h * 4 * KV_QVL, sizeof w);
            nibbles(T, w, 2 * j, 8, &a0[i], &a1[i]);
        }
    if (mb - w4 >= 2) {
        for (int i = 0; i < NB; i++) {
            vh x;
            memcpy(&x, p + i * bs + (size_t)h * 2 * KV_QVL, sizeof x);
            nibbles(T, __builtin_convertvector(x, vu), 2 * w4, 4, &a0[i], &a1[i]);
        }
        p += 2 * KV_QJL_KB;
        w4 += 2;
    }
    if (mb > w4)
        for (int i = 0; i < NB; i++) {
            vb x;
            memcpy(&x, p + i * bs + (size_t)h * KV_QVL, sizeof x);
            nibbles(T, __builtin_convertvector(x, vu), 2 * w4, 2, &a0[i], &a1[i]);
        }
    for (int i = 0; i < NB; i++) {
        vf r = a0[i] + a1[i];
        memcpy(S + i * KV_QJL_KB, &r, sizeof r);
    }
}

void kv_qjl_signs(const float *T, const uint8_t *sig, int mb, int nt, float *S)
{
    size_t bs = (size_t)KV_QJL_KB * (size_t)mb;
    int nb = (nt + KV_QJL_KB - 1) / KV_QJL_KB, b = 0;
    for (; b + 2 <= nb; b += 2)
        for (int h = 0; h < KV_QJL_KB / KV_QVL; h++)
            block_part(T, sig + (size_t)b * bs, bs, mb, h, S + b * KV_QJL_KB + h * KV_QVL, 2);
    for (; b < nb; b++)
        for (int h = 0; h < KV_QJL_KB / KV_QVL; h++)
            block_part(T, sig + (size_t)b * bs, bs, mb, h, S + b * KV_QJL_KB + h * KV_QVL, 1);
}

#if defined(__AVX512F__) && defined(__FMA__)
/* The pair layout (d a multiple of 8): S in blocks of 16 rows (8 for a
 * last block), each block 8-column chunk by chunk, a chunk w / 2 vectors of
 * 16 floats, vector p holding rows lo(p) = 4 (p / 2) + p % 2 (lanes 0-7)
 * and lo(p) + 2 (lanes 8-15) at the chunk's 8 columns.  A key's 8 columns
 * broadcast to both halves, so lane i of a vector's product accumulates
 * column c = i (mod 8) of its row, in order: kv_dot_fixed's 8 lane sums,
 * then its tree by pairwise merges of the vectors (pair_tree). */
static inline int pair_row(int p, int half) { return 4 * (p / 2) + p % 2 + 2 * half; }

static void pair_put(float *ST, int m, int d, int j, const float *row)
{
    int j0 = j / 16 * 16, w = m - j0 < 16 ? m - j0 : 16, r = j - j0;
    int p = (r / 4) * 2 + r % 2, half = (r / 2) % 2; /* pair_row's inverse */
    float *B = ST + (size_t)j0 * d;
    for (int c = 0; c < d; c++) B[((size_t)(c / 8) * (w / 2) + p) * 16 + half * 8 + c % 8] = row[c];
}

/* a + b of lanes ia, ib of the pair (x, y) (indices 0-15 x, 16-31 y) */
static inline __m512 merge(__m512 x, __m512 y, __m512i ia, __m512i ib)
{
    return _mm512_add_ps(_mm512_permutex2var_ps(x, ia, y), _mm512_permutex2var_ps(x, ib, y));
}

/* kv_dot_tree of the 16 rows of 8 pair vectors a[0..7]: lane r = row r.
 * Level 1: h_i = a_i + a_{i+4} of each half (groups A.lo B.lo A.hi B.hi);
 * level 2: h0 + h1, h2 + h3; level 3: their sum. */
static inline __m512 pair_tree(const __m512 *a)
{
    const __m512i l1a = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                  l1b = _mm512_add_epi32(l1a, _mm512_set1_epi32(4)),
                  ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                  od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
    __m512 z1[4], z2[2];
    for (int i = 0; i < 4; i++) z1[i] = merge(a[2 * i], a[2 * i + 1], l1a, l1b);
    for (int i = 0; i < 2; i++) z2[i] = merge(z1[2 * i], z1[2 * i + 1], ev, od);
    return merge(z2[0], z2[1], ev, od);
}

/* NT keys' dots with the W rows (16 or 8) of block B */
static inline __attribute__((always_inline)) void pair_dots(const float *B, int d, const float *const *x, int m,
                                                            float *out, const int NT, const int W)
{
    const int P = W / 2;
    __m512 acc[2][8];
    for (int t = 0; t < NT; t++)
        for (int p = 0; p < 8; p++) acc[t][p] = _mm512_setzero_ps();
    for (int c = 0; c < d; c += 8, B += 16 * P) {
        __m512 k[2];
        for (int t = 0; t < NT; t++) k[t] = _mm512_broadcast_f32x8(_mm256_loadu_ps(x[t] + c));
        for (int p = 0; p < P; p++) {
            __m512 s = _mm512_loadu_ps(B + 16 * p);
            for (int t = 0; t < NT; t++) acc[t][p] = _mm512_fmadd_ps(s, k[t], acc[t][p]);
        }
    }
    for (int t = 0; t < NT; t++) {
        if (W == 8)
            for (int p = 0; p < 4; p++) acc[t][4 + p] = acc[t][p];
        __m512 r = pair_tree(acc[t]);
        _mm512_mask_storeu_ps(out + (size_t)t * m, (__mmask16)((1u << W) - 1), r);
    }
}

static void pair_dots_all(const float *ST, int m, int d, const float *const *x, int nt, float *out)
{
    for (int j0 = 0; j0 < m; j0 += 16) {
        const float *B = ST + (size_t)j0 * d;
        float *o = out + j0;
        int t = 0;
        if (m - j0 >= 16) {
            for (; t + 2 <= nt; t += 2) pair_dots(B, d, x + t, m, o + (size_t)t * m, 2, 16);
            for (; t < nt; t++) pair_dots(B, d, x + t, m, o + (size_t)t * m, 1, 16);
        } else {
            for (; t + 2 <= nt; t += 2) pair_dots(B, d, x + t, m, o + (size_t)t * m, 2, 8);
            for (; t < nt; t++) pair_dots(B, d, x + t, m, o + (size_t)t * m, 1, 8);
        }
    }
}
#define KV_QJL_PAIRS(d) ((d) % 8 == 0)
#else
#define KV_QJL_PAIRS(d) 0
#define pair_put(ST, m, d, j, row) ((void)0)
#define pair_dots_all(ST, m, d, x, nt, out) ((void)0)
#endif

void kv_qjl_row_put(float *ST, int m, int d, int j, const float *row)
{
    if (KV_QJL_PAIRS(d)) {
        pair_put(ST, m, d, j, row);
        return;
    }
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
    if (KV_QJL_PAIRS(d)) {
        pair_dots_all(ST, m, d, x, nt, out);
        return;
    }
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

#if defined(__AVX512F__)
/* 8 keys' chains at once: columns x .. x + 7 of the 8 keys transposed (a
 * vector per column, a key per lane), each squared and added in double */
static void norms8(const float *const *k, int d, double *nn)
{
    __m512d acc = _mm512_setzero_pd();
    int x = 0;
    for (; x + 8 <= d; x += 8) {
        __m256 r[8], t[8], u[8];
        for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(k[i] + x);
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4) {
            u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
            u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
            u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
            u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
        }
        __m512d c[8]; /* column x + i: the exact products, then the sum (one rounding) */
        for (int i = 0; i < 4; i++) {
            c[i] = _mm512_cvtps_pd(_mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
            c[4 + i] = _mm512_cvtps_pd(_mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
        }
        for (int i = 0; i < 8; i++) acc = _mm512_fmadd_pd(c[i], c[i], acc);
    }
    _mm512_storeu_pd(nn, acc);
    for (; x < d; x++)
        for (int t = 0; t < 8; t++) nn[t] += (double)k[t][x] * k[t][x];
}
#endif

void kv_qjl_norms(const float *const *k, int nt, int d, float *out)
{
    double nn[8] = { 0 };
    for (int t0 = 0; t0 < nt; t0 += 8) {
        int n = nt - t0 < 8 ? nt - t0 : 8;
#if defined(__AVX512F__)
        const float *kk[8];
        for (int t = 0; t < 8; t++) kk[t] = k[t0 + (t < n ? t : 0)];
        norms8(kk, d, nn);
#else
        for (int t = 0; t < 8; t++) nn[t] = 0;
        for (int x = 0; x < d; x++) /* n independent chains, each in x order */
            for (int t = 0; t < n; t++) nn[t] += (double)k[t0 + t][x] * k[t0 + t][x];
#endif
        for (int t = 0; t < n; t++) out[t0 + t] = (float)sqrt(nn[t]);
    }
}
