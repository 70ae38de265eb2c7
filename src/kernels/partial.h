/* partial.h - the partial attention state (m, l, l2, u) and its merge.
 *
 * ALGORITHMS.md section 1.  A state summarises any set of tokens for one
 * query: m = max logit, l = sum w_i e^{a_i - m}, u = sum w_i e^{a_i - m} v_i.
 * We also carry l2 = sum w_i e^{2(a_i - m)} so that |softmax(a)|_2 =
 * sqrt(l2)/l can be had from the exact method without a second pass;
 * estimators may leave it 0.  A state is a flat array of KV_PSTATE_LEN(dv)
 * doubles so a batch of them is one contiguous MPI buffer:
 *     [0] m   [1] l   [2] l2   [3 .. 3+dv) u
 * The empty state (m = -inf, l = l2 = 0, u = 0) is the identity of merge. */
#ifndef KVSTREAM_PARTIAL_H
#define KVSTREAM_PARTIAL_H

#include <math.h>
#include <stddef.h>

#define KV_PSTATE_LEN(dv) ((size_t)(dv) + 3)
#define KV_PS_M 0
#define KV_PS_L 1
#define KV_PS_L2 2
#define KV_PS_U 3

/* Set a state to the identity. */
void kv_partial_clear(double *st, int dv);

/* dst <- merge(dst, src).  Commutative and associative up to rounding. */
void kv_partial_merge(double *dst, const double *src, int dv);

/* Fold n tokens with (already scaled) logits a[i], optional weights w[i]
 * (NULL = all 1) and float32 values V[i*dv ..] into st. */
void kv_partial_add(double *st, int dv, const float *a, const float *w,
                    const float *V, size_t n);

/* Fold one token with logit a, weight w and value v (double precision). */
void kv_partial_add_one(double *st, int dv, double a, double w, const float *v);

/* A tile's float max mt into the double running state r (rescaling r
 * when it raises the max, which is rare); returns the max to shift the
 * tile's logits by (a float logit, so exact).  The tile kernels' fold. */
static inline float kv_partial_raise_max(double *r, float mt, int dv)
{
    if (mt > r[KV_PS_M]) {
        if (r[KV_PS_M] != -INFINITY) {
            double f = exp(r[KV_PS_M] - (double)mt);
            r[KV_PS_L] *= f;
            r[KV_PS_L2] *= f * f;
            for (int c = 0; c < dv; c++) r[KV_PS_U + c] *= f;
        }
        r[KV_PS_M] = mt;
    }
    return (float)r[KV_PS_M];
}

/* z = u / l (dv doubles).  An empty state (l == 0) gives z = 0 and returns
 * -1 so callers can flag queries a method could not answer. */
int kv_partial_output(const double *st, int dv, double *z);

#endif
