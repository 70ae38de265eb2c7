/* dot.h - a dot product in one fixed order.
 *
 * 8 lanes, then the tail into lane c & 7, then a fixed tree: a token's
 * logit is bitwise the same whichever row, rank, alignment or caller
 * computes it, so logits compared across ranks (topk's global threshold)
 * or recomputed later (h2o's feedback) agree exactly.
 *
 * Every multiply-add is kv_madd's: one fused operation where the target
 * has one, else a rounded product then a sum.  Written as plain a * b + c,
 * gnu11's default -ffp-contract=fast let GCC fuse some copies and not
 * others (on a Zen tuning it avoids fused chains in loops but fuses the
 * peeled iterations), so two inlined copies of the same order could differ
 * in the last bit; explicit, every copy (scalar, vector, any build) gives
 * the same bits. */
#ifndef KVSTREAM_DOT_H
#define KVSTREAM_DOT_H

#include <stddef.h>
#include <string.h>

typedef float kv_dot_v8 __attribute__((vector_size(8 * sizeof(float))));
typedef float kv_dot_v4 __attribute__((vector_size(4 * sizeof(float))));

#if defined(__FMA__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__FMA__)
/* the target fuses: always fuse.  *c += *a * *b lane by lane (pointers: no
 * vector crosses a call's ABI; the intrinsic, one instruction, keeps the
 * accumulators of an unrolled block in registers) */
static inline float kv_madd(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline void kv_madd8(kv_dot_v8 *c, const kv_dot_v8 *a, const kv_dot_v8 *b)
{
    *c = (kv_dot_v8)_mm256_fmadd_ps((__m256)*a, (__m256)*b, (__m256)*c);
}
#elif defined(__FP_FAST_FMAF) || defined(__FMA4__)
/* another fusing target: the same, lane by lane */
static inline float kv_madd(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
static inline void kv_madd8(kv_dot_v8 *c, const kv_dot_v8 *a, const kv_dot_v8 *b)
{
    for (int j = 0; j < 8; j++) (*c)[j] = __builtin_fmaf((*a)[j], (*b)[j], (*c)[j]);
}
#else
/* no fused instruction to contract into: a product rounded, then the sum */
static inline float kv_madd(float a, float b, float c) { return c + a * b; }
static inline void kv_madd8(kv_dot_v8 *c, const kv_dot_v8 *a, const kv_dot_v8 *b) { *c += *a * *b; }
#endif

/* kv_madd in double, for sums kept in registers that must give the bits
 * of `u += a * b` with u in memory (which GCC always fuses where the target
 * can): *c += a * *b over 8 lanes (kv_madd_d8), one lane (kv_madd_d). */
typedef double kv_dot_v8d __attribute__((vector_size(8 * sizeof(double))));
#if defined(__FMA__) || defined(__FP_FAST_FMA) || defined(__FMA4__)
static inline double kv_madd_d(double a, double b, double c) { return __builtin_fma(a, b, c); }
#else
static inline double kv_madd_d(double a, double b, double c) { return c + a * b; }
#endif
static inline void kv_madd_d8(kv_dot_v8d *c, double a, const kv_dot_v8d *b)
{
#if defined(__AVX512F__)
    *c = (kv_dot_v8d)_mm512_fmadd_pd(_mm512_set1_pd(a), (__m512d)*b, (__m512d)*c);
#else
    for (int j = 0; j < 8; j++) (*c)[j] = kv_madd_d(a, (*b)[j], (*c)[j]);
#endif
}

/* 8 floats from p as doubles (GCC 12 splits the generic conversion into
 * halves and re-inserts them: one instruction with AVX-512) */
static inline kv_dot_v8d kv_ld8d(const float *p)
{
#if defined(__AVX512F__)
    return (kv_dot_v8d)_mm512_cvtps_pd(_mm256_loadu_ps(p));
#else
    kv_dot_v8 x;
    memcpy(&x, p, sizeof x);
    return __builtin_convertvector(x, kv_dot_v8d);
#endif
}

/* kv_dot_fixed's tail: from its 8 lane sums over [0, c) (c a multiple of
 * 8, d - c < 8), element c + i into lane i */
static inline void kv_dot_tail(kv_dot_v8 *acc, const float *q, const float *k, int c, int d)
{
    if (c == d) return;
    float l[8];
    memcpy(l, acc, sizeof l);
    for (int i = 0; i < 8 && c + i < d; i++) l[i] = kv_madd(q[c + i], k[c + i], l[i]);
    memcpy(acc, l, sizeof l);
}

/* its tree: h = (a0 + a4, a1 + a5, a2 + a6, a3 + a7), (h0 + h1) + (h2 + h3) */
static inline float kv_dot_tree(const kv_dot_v8 *a)
{
    kv_dot_v4 h = __builtin_shufflevector(*a, *a, 0, 1, 2, 3) + __builtin_shufflevector(*a, *a, 4, 5, 6, 7);
    return (h[0] + h[1]) + (h[2] + h[3]);
}

/* lane t of *out = kv_dot_tree(&a[t]), t < 8, bitwise (the same adds), in
 * three vector steps: each adds the pairs of the tree's level across vectors */
static inline void kv_dot_tree8(const kv_dot_v8 *a, kv_dot_v8 *out)
{
    kv_dot_v8 b[4], c[2], e;
    for (int i = 0; i < 4; i++) /* h of vector i in lanes 0-3, of vector i + 4 in lanes 4-7 */
        b[i] = __builtin_shufflevector(a[i], a[i + 4], 0, 1, 2, 3, 8, 9, 10, 11) +
               __builtin_shufflevector(a[i], a[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int i = 0; i < 2; i++) /* h0 + h1, h2 + h3 of vectors i, i + 4, i + 2, i + 6 */
        c[i] = __builtin_shufflevector(b[i], b[i + 2], 0, 2, 4, 6, 8, 10, 12, 14) +
               __builtin_shufflevector(b[i], b[i + 2], 1, 3, 5, 7, 9, 11, 13, 15);
    e = __builtin_shufflevector(c[0], c[1], 0, 2, 4, 6, 8, 10, 12, 14) + /* vectors 0 4 2 6 1 5 3 7 */
        __builtin_shufflevector(c[0], c[1], 1, 3, 5, 7, 9, 11, 13, 15);
    *out = __builtin_shufflevector(e, e, 0, 4, 2, 6, 1, 5, 3, 7);
}

static inline float kv_dot_fixed(const float *q, const float *k, int d)
{
    kv_dot_v8 acc = { 0 }, a, b;
    int c = 0;
    for (; c + 8 <= d; c += 8) { /* lane j: the elements c = j (mod 8), in order */
        memcpy(&a, q + c, sizeof a);
        memcpy(&b, k + c, sizeof b);
        kv_madd8(&acc, &a, &b);
    }
    kv_dot_tail(&acc, q, k, c, d);
    return kv_dot_tree(&acc);
}

#define KV_DOT_BLK 8 /* kv_dot_fixed_rows: vectors per block */

/* lane t of *out = kv_dot_fixed(q, x[t], d), t < 8: q loaded once for the
 * eight, its lanes and tail as kv_dot_fixed's, the trees at once */
static inline __attribute__((always_inline)) void kv_dot_fixed8(const float *q, const float *const *x, int d,
                                                                kv_dot_v8 *out)
{
    kv_dot_v8 acc[8], a, b;
    for (int t = 0; t < 8; t++) acc[t] = (kv_dot_v8){ 0 };
    int c = 0;
    for (; c + 8 <= d; c += 8) {
        memcpy(&a, q + c, sizeof a);
        for (int t = 0; t < 8; t++) {
            memcpy(&b, x[t] + c, sizeof b);
            kv_madd8(&acc[t], &a, &b);
        }
    }
    for (int t = 0; t < 8; t++) kv_dot_tail(&acc[t], q, x[t], c, d);
    kv_dot_tree8(acc, out);
}

static inline __attribute__((always_inline)) void kv_dot_fixed_rows_(const float *M, int rows, int d,
                                                                     const float *const *x, int nt, float *out)
{
    for (int j = 0; j < rows; j++) {
        const float *mj = M + (size_t)j * d;
        if (nt == KV_DOT_BLK) {
            kv_dot_v8 o;
            kv_dot_fixed8(mj, x, d, &o);
            for (int t = 0; t < nt; t++) out[(size_t)t * rows + j] = o[t];
            continue;
        }
        for (int t = 0; t < nt; t++) out[(size_t)t * rows + j] = kv_dot_fixed(mj, x[t], d);
    }
}

/* out[t rows + j] = kv_dot_fixed(M + j d, x[t], d) for t < nt <= KV_DOT_BLK,
 * j < rows, bitwise, a row of M loaded once for the block of vectors. */
static inline void kv_dot_fixed_rows(const float *M, int rows, int d, const float *const *x, int nt, float *out)
{
    if (nt == KV_DOT_BLK) kv_dot_fixed_rows_(M, rows, d, x, KV_DOT_BLK, out); /* constant: accumulators in registers */
    else kv_dot_fixed_rows_(M, rows, d, x, nt, out);
}

#endif
