/* slices.h - fold work split into fixed slices, in parallel, merged in order.
 *
 * For tokens held in pages (methods/tokring, methods/rowpool): slice i is
 * folded by fn into its own nq states, then the slices' states are merged
 * into st in slice order, so the result depends on how the work is sliced,
 * never on the thread count (inside an active parallel region the slices
 * run serially, through the same scratch states).  One slice folds
 * straight into st.  Callers keep ns small (it sizes the scratch). */
#ifndef KVSTREAM_SLICES_H
#define KVSTREAM_SLICES_H

#include <stdint.h>

/* Fold slice i into st (nq states, already holding what came before). */
typedef int (*kv_slice_fn)(const void *arg, int64_t i, const float *Q, int nq, float scale, double *st);

/* The slice length for n items (rows, groups) in slices of at least
 * per0, so that a call with nq queries has at most max(16, min(256, 4096 /
 * nq)) slices: the scratch (one set of nq states per slice) stays within
 * about 4 MiB at dv = 128, and the slicing depends on n and nq only. */
static inline int64_t kv_slice_len(int64_t n, int64_t per0, int nq)
{
    int64_t cap = nq > 0 ? 4096 / nq : 256, per = per0 > 0 ? per0 : 1;
    cap = cap > 256 ? 256 : cap < 16 ? 16 : cap;
    while ((n + per - 1) / per > cap) per *= 2;
    return per;
}

/* Returns KV_OK, fn's first error, or KV_EINTERNAL without scratch memory. */
int kv_fold_slices(int64_t ns, kv_slice_fn fn, const void *arg, const float *Q, int nq, int dv, float scale,
                   double *st);

#endif
