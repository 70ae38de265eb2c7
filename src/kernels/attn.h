/* attn.h - exact attention kernels over blocks of float32 keys and values.
 *
 * Both fold n tokens (rows of K: n x d and V: n x dv) into nq partial states
 * (src/kernels/partial.h), one per query row of Q (nq x d), with logits
 * scale * <q, k>.  Work is done in tiles whose float sums are folded into the
 * double states, so accuracy does not depend on n. */
#ifndef KVSTREAM_ATTN_H
#define KVSTREAM_ATTN_H

#include <stddef.h>
#include <stdint.h>

/* All return KV_OK, or KV_EINTERNAL when their scratch (a few tiles per
 * query and, for 4 or more queries, Q transposed) cannot be allocated; st
 * is then unspecified. */

/* Serial kernel (call from inside a parallel region, or for small n). */
int kv_attn_fold(const float *Q, int nq, const float *K, const float *V,
                  size_t n, int d, int dv, float scale, double *st);

/* Serial kernel over rows held in pages (page i: n[i] rows, 0 allowed, at
 * K[i], n[i] x d, and V[i], n[i] x dv), taken as laid end to end: one
 * running state and one set of scratch for the whole list, tiles spanning
 * page boundaries, the next page's rows prefetched through a table of row
 * pointers.  Bitwise the result of kv_attn_fold on the same rows in one
 * contiguous block (the tile arithmetic sees values, not addresses), so
 * how the rows are split into pages never changes the answer. */
int kv_attn_fold_pages(const float *Q, int nq, const float *const *K, const float *const *V, const size_t *n,
                       size_t npages, int d, int dv, float scale, double *st);

/* OpenMP kernel: splits the tokens into fixed slices (their size depends on
 * n only), so the result is bitwise the same for any thread count.  Runs
 * serially when called inside an active parallel region. */
int kv_attn_fold_par(const float *Q, int nq, const float *K, const float *V,
                      size_t n, int d, int dv, float scale, double *st);

/* Causal variable-length fold (multi-position batch, flash-decoding style):
 * query i (row i of Q) sees tokens [0, len[i]) only; len is non-decreasing
 * and K, V hold at least len[nq - 1] rows (len[i] = 0: state left as is).
 * Every key tile is streamed once for all the queries that reach it, so nq
 * queries at nq prefixes cost one pass, not nq.  Fixed slices of a size
 * that depends on len[nq - 1] only, merged in slice order: bitwise the same
 * for any thread count.  Per query, the tile arithmetic is that of
 * kv_attn_fold_par over its prefix with nq queries (same path, batched when
 * nq >= 4), so while both pick the same slice size
 * (prefixes up to 2^21 tokens) the result is bitwise that of
 * kv_attn_fold_par(Q, nq, K, V, len[i], ...) row i; otherwise equal within
 * float rounding.  Runs serially inside an active parallel region. */
int kv_attn_fold_multi(const float *Q, int nq, const size_t *len, const float *K, const float *V,
                       int d, int dv, float scale, double *st);

/* The same two over keys and values held as IEEE half (finite), converted
 * to float32 a tile at a time (kernels/half.h): bitwise the results of
 * kv_attn_fold_par / kv_attn_fold_multi on the same values as floats. */
int kv_attn_fold_par_f16(const float *Q, int nq, const uint16_t *K, const uint16_t *V,
                         size_t n, int d, int dv, float scale, double *st);
int kv_attn_fold_multi_f16(const float *Q, int nq, const size_t *len, const uint16_t *K, const uint16_t *V,
                           int d, int dv, float scale, double *st);

/* Vectorisable exp for x <= 0 (relative error <= 1e-7; x < -87 gives 0).
 * The batched kernels use the same polynomial inline. */
void kv_expf_neg(float *x, size_t n);

/* One tile of a single query's softmax fold, in place: s[0..nt) (logits,
 * max mt) become the weights exp(s - m) under the running max m of r
 * (raised, r rescaled, as kv_partial_raise_max), and their sum and sum of
 * squares, added in token order, go into r's l and l2.  r has dv value
 * sums.  The quantised kernels' fold (the float kernel's own fold sums by
 * SIMD lanes). */
void kv_attn_exp_tile(double *r, float *s, int nt, float mt, int dv);

#endif
