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

#if defined(__FMA__)
#include <immintrin.h>
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

/* kv_dot_fixed's end from its 8 lane sums over [0, c) (c a multiple of 8,
 * d - c < 8): the tail element c + i into lane i, then the tree
 * ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7)) */
static inline float kv_dot_finish(const kv_dot_v8 *acc, const float *q, const float *k, int c, int d)
{
    float l[8];
    memcpy(l, acc, sizeof l);
    for (int i = 0; i < 8 && c + i < d; i++) l[i] = kv_madd(q[c + i], k[c + i], l[i]);
    return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
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
    return kv_dot_finish(&acc, q, k, c, d);
}

#define KV_DOT_BLK 8 /* kv_dot_fixed_rows: vectors per block */

static inline __attribute__((always_inline)) void kv_dot_fixed_rows_(const float *M, int rows, int d,
                                                                     const float *const *x, int nt, float *out)
{
    for (int j = 0; j < rows; j++) {
        const float *mj = M + (size_t)j * d;
        kv_dot_v8 acc[KV_DOT_BLK], a, b;
        for (int t = 0; t < nt; t++) acc[t] = (kv_dot_v8){ 0 };
        int c = 0;
        for (; c + 8 <= d; c += 8) { /* kv_dot_fixed's 8 lanes, as one vector */
            memcpy(&a, mj + c, sizeof a);
            for (int t = 0; t < nt; t++) {
                memcpy(&b, x[t] + c, sizeof b);
                kv_madd8(&acc[t], &a, &b);
            }
        }
        for (int t = 0; t < nt; t++) {
            if (c == d) { /* its tree: (a0 + a4, a1 + a5, a2 + a6, a3 + a7), then pairs */
                kv_dot_v4 h = __builtin_shufflevector(acc[t], acc[t], 0, 1, 2, 3) +
                              __builtin_shufflevector(acc[t], acc[t], 4, 5, 6, 7);
                out[(size_t)t * rows + j] = (h[0] + h[1]) + (h[2] + h[3]);
            } else {
                out[(size_t)t * rows + j] = kv_dot_finish(&acc[t], mj, x[t], c, d);
            }
        }
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
