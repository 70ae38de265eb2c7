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

/* z = u / l (dv doubles).  An empty state (l == 0) gives z = 0 and returns
 * -1 so callers can flag queries a method could not answer. */
int kv_partial_output(const double *st, int dv, double *z);

#endif
