/* dot.h - a dot product in one fixed order.
 *
 * 8 lanes, then the tail into lane c & 7, then a fixed tree: a token's
 * logit is bitwise the same whichever row, rank, alignment or caller
 * computes it, so logits compared across ranks (topk's global threshold)
 * or recomputed later (h2o's feedback) agree exactly. */
#ifndef KVSTREAM_DOT_H
#define KVSTREAM_DOT_H

static inline float kv_dot_fixed(const float *q, const float *k, int d)
{
    float acc[8] = { 0 };
    int c = 0;
    for (; c + 8 <= d; c += 8)
        for (int j = 0; j < 8; j++) acc[j] += q[c + j] * k[c + j];
    for (; c < d; c++) acc[c & 7] += q[c] * k[c];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

#endif
