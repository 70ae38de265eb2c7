/* slices.c - see slices.h */
#include <omp.h>
#include <stdlib.h>
#include "core/kverr.h"
#include "kernels/partial.h"
#include "kernels/slices.h"

int kv_fold_slices(int64_t ns, kv_slice_fn fn, const void *arg, const float *Q, int nq, int dv, float scale,
                   double *st)
{
    if (ns <= 0 || nq <= 0) return KV_OK;
    if (ns == 1) return fn(arg, 0, Q, nq, scale, st);
    size_t sl = KV_PSTATE_LEN(dv);
    double *tmp = malloc(sizeof(double) * sl * (size_t)nq * (size_t)ns);
    if (!tmp) return KV_EINTERNAL;
    int bad = 0;
    /* the same arithmetic serially (inside a parallel region) or in parallel */
#pragma omp parallel for schedule(dynamic) reduction(| : bad) if (!omp_in_parallel())
    for (int64_t i = 0; i < ns; i++) {
        double *t = tmp + (size_t)i * sl * (size_t)nq;
        for (int q = 0; q < nq; q++) kv_partial_clear(t + q * sl, dv);
        bad |= fn(arg, i, Q, nq, scale, t) != KV_OK;
    }
    for (int64_t i = 0; i < ns && !bad; i++)
        for (int q = 0; q < nq; q++) kv_partial_merge(st + q * sl, tmp + ((size_t)i * nq + q) * sl, dv);
    free(tmp);
    return bad ? KV_EINTERNAL : KV_OK;
}
