/* dot.h - a dot product in one fixed order.
 *
 * 8 lanes, then the tail into lane c & 7, then a fixed tree: a token's
 * logit is bitwise the same whichever row, rank, alignment or caller
 * computes it, so logits compared across ranks (topk's global threshold)
 * or recomputed later (h2o's feedback) agree exactly. */
#ifndef KVSTREAM_DOT_H
#define KVSTREAM_DOT_H

#include <stddef.h>
#include <string.h>

static inline float kv_dot_fixed(const float *q, const float *k, int d)
{
    float acc[8] = { 0 };
    int c = 0;
    for (; c + 8 <= d; c += 8)
        for (int j = 0; j < 8; j++) acc[j] += q[c + j] * k[c + j];
    for (; c < d; c++) acc[c & 7] += q[c] * k[c];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

#define KV_DOT_BLK 8 /* kv_dot_fixed_rows: vectors per block */


typedef float kv_dot_v8 __attribute__((vector_size(8 * sizeof(float))));
typedef float kv_dot_v4 __attribute__((vector_size(4 * sizeof(float))));

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
                acc[t] += a * b;
            }
        }
        for (int t = 0; t < nt; t++) {
            if (c == d) { /* its tree: (a0 + a4, a1 + a5, a2 + a6, a3 + a7), then pairs */
                kv_dot_v4 h = __builtin_shufflevector(acc[t], acc[t], 0, 1, 2, 3) +
                              __builtin_shufflevector(acc[t], acc[t], 4, 5, 6, 7);
                out[(size_t)t * rows + j] = (h[0] + h[1]) + (h[2] + h[3]);
            } else { /* its tail into lane e & 7 */
                float l[8];
                memcpy(l, &acc[t], sizeof l);
                for (int e = c; e < d; e++) l[e & 7] += mj[e] * x[t][e];
                out[(size_t)t * rows + j] = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
            }
        }
    }
}

/* out[t rows + j] = kv_dot_fixed(M + j d, x[t], d) for t < nt <= KV_DOT_BLK,
 * j < rows, in its order (8 lanes, tail lanes, tree), a row of M loaded once
 * for the block of vectors.  Bitwise kv_dot_fixed's without FMA contraction
 * (-ffp-contract=off/on); with gnu11's default (fast) GCC contracts each
 * inlined copy of either as it likes, so the two may differ in the last
 * bit (measured on random data: none with off or on, some under fast). */
static inline void kv_dot_fixed_rows(const float *M, int rows, int d, const float *const *x, int nt, float *out)
{
    if (nt == KV_DOT_BLK) kv_dot_fixed_rows_(M, rows, d, x, KV_DOT_BLK, out); /* constant: accumulators in registers */
    else kv_dot_fixed_rows_(M, rows, d, x, nt, out);
}

#endif
