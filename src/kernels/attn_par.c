/* attn_par.c - the entry points of kernels/attn.h: the serial fold over a
 * block or a list of pages, and the OpenMP folds over fixed slices (their
 * size depends on n only, merged in slice order, so results are bitwise
 * the same for any thread count), float32 and half sources alike.  The
 * tile arithmetic is kernels/attn.c's kv_attn_fold_core. */
#include <omp.h>
#include <stdlib.h>
#include "core/kverr.h"
#include "kernels/attn.h"
#include "kernels/attn_rows.h"
#include "kernels/partial.h"

int kv_attn_fold(const float *Q, int nq, const float *K, const float *V,
                 size_t n, int d, int dv, float scale, double *st)
{
    return kv_attn_fold_core(Q, nq, NULL, 0, src_f32(K, V), n, d, dv, scale, st, nq >= 4);
}

int kv_attn_fold_pages(const float *Q, int nq, const float *const *K, const float *const *V, const size_t *n,
                       size_t npages, int d, int dv, float scale, double *st)
{
    size_t rows = 0;
    for (size_t i = 0; i < npages; i++) rows += n[i];
    kvsrc s = { .esz = sizeof(float), .pk = K, .pv = V, .pn = n, .np = npages };
    return kv_attn_fold_core(Q, nq, NULL, 0, s, rows, d, dv, scale, st, nq >= 4);
}

/* slice size depends on n only: results independent of thread count */
static size_t slice_of(size_t n)
{
    size_t slice = 8192;
    while (n / slice > 256) slice *= 2;
    return slice;
}

static int fold_par(const float *Q, int nq, kvsrc src, size_t n, int d, int dv, float scale, double *st)
{
    size_t slice = slice_of(n);
    size_t ns = (n + slice - 1) / slice;
    if (ns <= 1) return kv_attn_fold_core(Q, nq, NULL, 0, src, n, d, dv, scale, st, nq >= 4);
    size_t sl = KV_PSTATE_LEN(dv);
    double *part = malloc(sizeof(double) * ns * (size_t)nq * sl);
    if (!part) return KV_EINTERNAL;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (!omp_in_parallel())
    for (size_t i = 0; i < ns; i++) {
        double *p = part + i * (size_t)nq * sl;
        for (int q = 0; q < nq; q++) kv_partial_clear(p + (size_t)q * sl, dv);
        size_t a = i * slice, cnt = n - a < slice ? n - a : slice;
        bad |= kv_attn_fold_core(Q, nq, NULL, 0, src_at(src, a, d, dv), cnt, d, dv, scale, p, nq >= 4) != KV_OK;
    }
    for (size_t i = 0; i < ns; i++)
        for (int q = 0; q < nq; q++)
            kv_partial_merge(st + (size_t)q * sl, part + (i * (size_t)nq + q) * sl, dv);
    free(part);
    return bad ? KV_EINTERNAL : KV_OK;
}

int kv_attn_fold_par(const float *Q, int nq, const float *K, const float *V,
                     size_t n, int d, int dv, float scale, double *st)
{
    return fold_par(Q, nq, src_f32(K, V), n, d, dv, scale, st);
}

int kv_attn_fold_par_f16(const float *Q, int nq, const uint16_t *K, const uint16_t *V,
                         size_t n, int d, int dv, float scale, double *st)
{
    return fold_par(Q, nq, src_f16(K, V), n, d, dv, scale, st);
}

static int fold_multi(const float *Q, int nq, const size_t *len, kvsrc src, int d, int dv, float scale, double *st)
{
    if (nq <= 0 || len[nq - 1] == 0) return KV_OK;
    size_t n = len[nq - 1], slice = slice_of(n);
    size_t ns = (n + slice - 1) / slice;
    if (ns <= 1) return kv_attn_fold_core(Q, nq, len, 0, src, n, d, dv, scale, st, nq >= 4);
    size_t sl = KV_PSTATE_LEN(dv);
    double *part = malloc(sizeof(double) * ns * (size_t)nq * sl);
    int *first = malloc(sizeof(int) * ns); /* first query that reaches slice i */
    if (!part || !first) {
        free(part);
        free(first);
        return KV_EINTERNAL;
    }
    for (size_t i = 0, q = 0; i < ns; i++) {
        while (len[q] <= i * slice) q++; /* stops: len[nq - 1] = n > i * slice */
        first[i] = (int)q;
    }
    int bad = 0;
    /* later slices serve fewer queries: dynamic, each slice writes only its own states */
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad) if (!omp_in_parallel())
    for (size_t i = 0; i < ns; i++) {
        int q0 = first[i];
        double *p = part + (i * (size_t)nq + q0) * sl;
        for (int q = q0; q < nq; q++) kv_partial_clear(p + (size_t)(q - q0) * sl, dv);
        size_t a = i * slice, cnt = n - a < slice ? n - a : slice;
        bad |= kv_attn_fold_core(Q + (size_t)q0 * d, nq - q0, len + q0, a, src_at(src, a, d, dv), cnt, d, dv,
                         scale, p, nq >= 4) != KV_OK;
    }
    for (size_t i = 0; i < ns; i++)
        for (int q = first[i]; q < nq; q++)
            kv_partial_merge(st + (size_t)q * sl, part + (i * (size_t)nq + q) * sl, dv);
    free(part);
    free(first);
    return bad ? KV_EINTERNAL : KV_OK;
}

int kv_attn_fold_multi(const float *Q, int nq, const size_t *len, const float *K, const float *V,
                       int d, int dv, float scale, double *st)
{
    return fold_multi(Q, nq, len, src_f32(K, V), d, dv, scale, st);
}

int kv_attn_fold_multi_f16(const float *Q, int nq, const size_t *len, const uint16_t *K, const uint16_t *V,
                           int d, int dv, float scale, double *st)
{
    return fold_multi(Q, nq, len, src_f16(K, V), d, dv, scale, st);
}
