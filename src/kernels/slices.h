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

/* Returns KV_OK, fn's first error, or KV_EINTERNAL without scratch memory. */
int kv_fold_slices(int64_t ns, kv_slice_fn fn, const void *arg, const float *Q, int nq, int dv, float scale,
                   double *st);

#endif
