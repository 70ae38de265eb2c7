/* tokring.c - see tokring.h */
#include <stdlib.h>
#include <string.h>
#include "attn.h"
#include "tokring.h"

void kv_tokring_init(kv_tokring *r, int d, int dv, int64_t cap)
{
    memset(r, 0, sizeof *r);
    r->d = d;
    r->dv = dv;
    r->cap = cap;
}

void kv_tokring_free(kv_tokring *r)
{
    free(r->K);
    free(r->V);
    free(r->idx);
    r->K = r->V = NULL;
    r->idx = NULL;
    r->alloc = r->count = r->head = 0;
}

/* Reallocate to n rows, unwrapping so the oldest token lands in row 0. */
static int regrow(kv_tokring *r, int64_t n, kv_err *err)
{
    size_t d = (size_t)r->d, dv = (size_t)r->dv;
    float *K = malloc(sizeof(float) * d * (size_t)n);
    float *V = malloc(sizeof(float) * dv * (size_t)n);
    int64_t *idx = malloc(sizeof(int64_t) * (size_t)n);
    if (!K || !V || !idx) {
        free(K); free(V); free(idx);
        return kv_seterr(err, KV_EINTERNAL, "window: out of memory holding %lld tokens", (long long)n);
    }
    for (int64_t i = 0; i < r->count; i++) {
        int64_t row = kv_tokring_row(r, i);
        memcpy(K + i * d, r->K + row * d, sizeof(float) * d);
        memcpy(V + i * dv, r->V + row * dv, sizeof(float) * dv);
        idx[i] = r->idx[row];
    }
    free(r->K); free(r->V); free(r->idx);
    r->K = K; r->V = V; r->idx = idx;
    r->alloc = n;
    r->head = 0;
    return KV_OK;
}

int kv_tokring_push(kv_tokring *r, const float *k, const float *v, int64_t g, kv_err *err)
{
    if (r->count == r->cap) return kv_seterr(err, KV_EINTERNAL, "tokring: push into a full ring");
    if (r->count == r->alloc) {
        int64_t n = r->alloc ? 2 * r->alloc : 64;
        if (n > r->cap) n = r->cap;
        if (regrow(r, n, err)) return err->code;
    }
    int64_t row = kv_tokring_row(r, r->count);
    memcpy(r->K + row * (size_t)r->d, k, sizeof(float) * (size_t)r->d);
    memcpy(r->V + row * (size_t)r->dv, v, sizeof(float) * (size_t)r->dv);
    r->idx[row] = g;
    r->count++;
    return KV_OK;
}

void kv_tokring_pop(kv_tokring *r)
{
    if (!r->count) return;
    r->head = r->head + 1 == r->alloc ? 0 : r->head + 1;
    r->count--;
}

int64_t kv_tokring_lower(const kv_tokring *r, int64_t g)
{
    int64_t lo = 0, hi = r->count;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (kv_tokring_idx(r, mid) < g) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

void kv_tokring_fold(const kv_tokring *r, int64_t from, const float *Q, int nq, float scale, double *st)
{
    if (from >= r->count) return;
    /* the suffix is at most two contiguous stretches of rows */
    int64_t start = kv_tokring_row(r, from), n = r->count - from;
    int64_t n1 = r->alloc - start < n ? r->alloc - start : n;
    size_t d = (size_t)r->d, dv = (size_t)r->dv;
    kv_attn_fold_par(Q, nq, r->K + start * d, r->V + start * dv, (size_t)n1, r->d, r->dv, scale, st);
    if (n > n1) kv_attn_fold_par(Q, nq, r->K, r->V, (size_t)(n - n1), r->d, r->dv, scale, st);
}

size_t kv_tokring_bytes(const kv_tokring *r)
{
    return (size_t)r->count * ((size_t)(r->d + r->dv) * sizeof(float) + sizeof(int64_t));
}
