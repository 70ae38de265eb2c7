/* dot.h - a dot product in one fixed order.
 *
 * 8 lanes, then the tail into lane c & 7, then a fixed tree: a token's
 * logit is bitwise the same whichever row, rank, alignment or caller
 * computes it, so logits compared across ranks (topk's global threshold)
 * or recomputed later (h2o's feedback) agree exactly. */
#ifndef KVSTREAM_DOT_H
#define KVSTREAM_DOT_H

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

typedef float kv_v8f __attribute__((vector_size(8 * sizeof(float))));

/* kv_dot_fixed of q with four rows at once (out[r] = kv_dot_fixed(q, k_r,
 * d), the same bits: lane j of each accumulator is that acc[j]): four
 * chains in flight instead of one. */
static inline void kv_dot_fixed4(const float *q, const float *k0, const float *k1, const float *k2, const float *k3,
                                 int d, float *out)
{
    kv_v8f a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 }, x, y;
    int c = 0;
    for (; c + 8 <= d; c += 8) {
        memcpy(&x, q + c, sizeof x);
        memcpy(&y, k0 + c, sizeof y);
        a0 += x * y;
        memcpy(&y, k1 + c, sizeof y);
        a1 += x * y;
        memcpy(&y, k2 + c, sizeof y);
        a2 += x * y;
        memcpy(&y, k3 + c, sizeof y);
        a3 += x * y;
    }
    for (; c < d; c++) {
        a0[c & 7] += q[c] * k0[c];
        a1[c & 7] += q[c] * k1[c];
        a2[c & 7] += q[c] * k2[c];
        a3[c & 7] += q[c] * k3[c];
    }
#define KV_DOT_TREE(a) (((a)[0] + (a)[4]) + ((a)[1] + (a)[5])) + (((a)[2] + (a)[6]) + ((a)[3] + (a)[7]))
    out[0] = KV_DOT_TREE(a0);
    out[1] = KV_DOT_TREE(a1);
    out[2] = KV_DOT_TREE(a2);
    out[3] = KV_DOT_TREE(a3);
#undef KV_DOT_TREE
}

#endif
