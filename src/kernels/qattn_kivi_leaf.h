/* qattn_kivi_leaf.h - the inner loops of kernels/qattn_kivi.c, one set per
 * build: qattn_kivi512.c under AVX-512, qattn_kivi.c's GCC-vector ones
 * elsewhere.  Private to those two files. */
#ifndef KVSTREAM_QATTN_KIVI_LEAF_H
#define KVSTREAM_QATTN_KIVI_LEAF_H

#include "kernels/qattn.h"
#include "kernels/qattn_kivi.h"

#define KV_QK_SEGS (KV_QTILE / 16)

/* The factor key position c's qs carries (the leaf reads code c of a word
 * as code times its inverse). */
float kv_qk_kscale(int bits, int c);

/* Floats rounded up to whole 16-float vectors. */
static inline int kv_qk_pad(int n) { return (n + 15) / 16 * 16; }

/* Bytes [at, n) of p still to prefetch, step bytes (whole lines) a call:
 * the next tile's records, fetched a few lines at a time from inside the
 * current tile's loops (a burst of prefetches stalls on fill buffers). */
typedef struct {
    const uint8_t *p;
    size_t n, at, step;
} kv_qk_pf;

static inline void kv_qk_prefetch(kv_qk_pf *f)
{
    if (!f) return;
    size_t e = f->at + f->step < f->n ? f->at + f->step : f->n;
    for (; f->at < e; f->at += 64) __builtin_prefetch(f->p + f->at);
}

/* what the calls left */
static inline void kv_qk_prefetch_rest(kv_qk_pf *f)
{
    if (!f) return;
    for (; f->at < f->n; f->at += 64) __builtin_prefetch(f->p + f->at);
}

/* The kv_qk_prefetch calls the leaves make over a whole tile (a step is
 * a tile's lines over these, so they spread it). */
size_t kv_qk_pf_calls(const kv_qk_plan *p);

/* A tile: ns segments, tokens [t0[i], t0[i] + n[i]) of group record r[i]
 * (n[i] a multiple of 16), nt tokens in all (at most KV_QTILE); pf: the
 * next tile's prefetch (NULL: none), advanced by the leaves. */
typedef struct {
    int ns, nt;
    const uint8_t *r[KV_QK_SEGS];
    int t0[KV_QK_SEGS], n[KV_QK_SEGS];
    kv_qk_pf *pf;
} kv_qk_tile;

/* The tile's logits: per segment its group's key (z, s) halves fold into
 * the query x (kv_qk_pad(kq) floats, 0 past d; ksc: kv_qk_kscale per
 * position), qs = x s ksc and qz = x . z, then S[t] = qz + sum_c qs[c]
 * code_tc, in token order.  wk: scratch of 3 kv_qk_pad(kq) floats. */
void kv_qk_keys(const kv_qk_plan *p, const kv_qk_tile *tl, const float *x, const float *ksc, float *wk, float *S);

/* From the tile's weights w (nt) and its value (z, s) halves: a[t nvg +
 * j] = w_t s_tj (times what the leaf's value planes need), zsum[j] =
 * sum_t w_t z_tj.  zl: scratch of 16 nvg floats. */
void kv_qk_weights(const kv_qk_plan *p, const kv_qk_tile *tl, const float *w, float *a, float *zl, float *zsum);

/* acc[c] += sum_t a[t nvg + c / gv] code_tc over the tile's value codes. */
void kv_qk_values(const kv_qk_plan *p, const kv_qk_tile *tl, const float *a, float *acc);

#endif
