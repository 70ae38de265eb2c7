/* tokring.c - see tokring.h */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "methods/method.h"
#include "methods/tokring.h"

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

int kv_tokring_fold(const kv_tokring *r, int64_t from, const float *Q, int nq, float scale, double *st)
{
    if (from >= r->count) return KV_OK;
    /* the suffix is at most two contiguous stretches of rows */
    int64_t start = kv_tokring_row(r, from), n = r->count - from;
    int64_t n1 = r->alloc - start < n ? r->alloc - start : n;
    size_t d = (size_t)r->d, dv = (size_t)r->dv;
    int rc = kv_attn_fold_par(Q, nq, r->K + start * d, r->V + start * dv, (size_t)n1, r->d, r->dv, scale, st);
    if (!rc && n > n1) rc = kv_attn_fold_par(Q, nq, r->K, r->V, (size_t)(n - n1), r->d, r->dv, scale, st);
    return rc;
}

size_t kv_tokring_bytes(const kv_tokring *r)
{
    return (size_t)r->count * ((size_t)(r->d + r->dv) * sizeof(float) + sizeof(int64_t));
}

static const char *what(const kv_rd *in) { return in->what ? in->what : "a"; }

/* rows head.. of a ring, count of them, as at most two contiguous stretches */
static void put_rows(kv_buf *out, const void *base, size_t rowbytes, int64_t alloc, int64_t head, int64_t count)
{
    int64_t n1 = alloc - head < count ? alloc - head : count;
    kv_buf_put_i64(out, (int64_t)((size_t)count * rowbytes));
    if (n1 > 0) kv_buf_put(out, (const uint8_t *)base + (size_t)head * rowbytes, (size_t)n1 * rowbytes);
    if (count > n1) kv_buf_put(out, base, (size_t)(count - n1) * rowbytes);
}

void kv_tokring_save(const kv_tokring *r, kv_buf *out)
{
    kv_buf_put_i64(out, r->alloc);
    kv_buf_put_i64(out, r->head);
    kv_buf_put_i64(out, r->count);
    put_rows(out, r->K, sizeof(float) * (size_t)r->d, r->alloc, r->head, r->count);
    put_rows(out, r->V, sizeof(float) * (size_t)r->dv, r->alloc, r->head, r->count);
    put_rows(out, r->idx, sizeof(int64_t), r->alloc, r->head, r->count);
}

/* the inverse of put_rows: the length must be exactly count rows */
static int get_rows(kv_rd *in, void *base, size_t rowbytes, int64_t alloc, int64_t head, int64_t count, kv_err *err)
{
    int64_t len;
    if (kv_rd_i64(in, &len, err)) return err->code;
    if (len < 0 || (uint64_t)len != (uint64_t)count * rowbytes)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad token ring length", what(in));
    int64_t n1 = alloc - head < count ? alloc - head : count;
    if (n1 > 0 && kv_rd_get(in, (uint8_t *)base + (size_t)head * rowbytes, (size_t)n1 * rowbytes, err))
        return err->code;
    if (count > n1 && kv_rd_get(in, base, (size_t)(count - n1) * rowbytes, err)) return err->code;
    return KV_OK;
}

/* could pushes have grown the ring to a rows?  (0, then 64, doubling, capped at cap) */
static int legal_alloc(int64_t cap, int64_t a)
{
    if (a == 0) return 1;
    int64_t n = cap < 64 ? cap : 64;
    while (n < a && n < cap) n = n > cap / 2 ? cap : 2 * n;
    return n == a;
}

int kv_tokring_load(kv_tokring *r, kv_rd *in, int64_t max_tokens, int64_t n_total, kv_err *err)
{
    int64_t alloc, head, count;
    if (kv_rd_i64(in, &alloc, err) || kv_rd_i64(in, &head, err) || kv_rd_i64(in, &count, err)) return err->code;
    /* a ring grows only when full, so alloc is at most twice the tokens seen;
     * the byte check keeps a corrupt count from a huge allocation */
    size_t rowbytes = sizeof(float) * (size_t)(r->d + r->dv) + sizeof(int64_t);
    if (alloc < 0 || !legal_alloc(r->cap, alloc) || (alloc > 64 && alloc / 2 > max_tokens) || count < 0 ||
        count > alloc || count > max_tokens || (alloc ? head < 0 || head >= alloc : head != 0) ||
        (uint64_t)count > (in->len - in->pos) / rowbytes)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad token ring header", what(in));
    kv_tokring t = *r;
    t.alloc = alloc;
    t.head = head;
    t.count = count;
    t.K = t.V = NULL;
    t.idx = NULL;
    if (alloc) {
        t.K = malloc(sizeof(float) * (size_t)r->d * (size_t)alloc);
        t.V = malloc(sizeof(float) * (size_t)r->dv * (size_t)alloc);
        t.idx = malloc(sizeof(int64_t) * (size_t)alloc);
        if (!t.K || !t.V || !t.idx) {
            kv_tokring_free(&t);
            return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring %lld tokens", (long long)alloc);
        }
    }
    if (get_rows(in, t.K, sizeof(float) * (size_t)r->d, alloc, head, count, err) ||
        get_rows(in, t.V, sizeof(float) * (size_t)r->dv, alloc, head, count, err) ||
        get_rows(in, t.idx, sizeof(int64_t), alloc, head, count, err)) {
        kv_tokring_free(&t);
        return err->code;
    }
    for (int64_t i = 0; i < count; i++) {
        int64_t g = kv_tokring_idx(&t, i), row = kv_tokring_row(&t, i);
        if (g < 0 || g >= n_total || (i && g <= kv_tokring_idx(&t, i - 1))) {
            kv_tokring_free(&t);
            return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad token index", what(in));
        }
        /* traces hold finite numbers only (io/trace.c checks) */
        if (!kv_all_finite(t.K + row * (size_t)t.d, (size_t)t.d) ||
            !kv_all_finite(t.V + row * (size_t)t.dv, (size_t)t.dv)) {
            kv_tokring_free(&t);
            return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a non-finite key or value", what(in));
        }
    }
    kv_tokring_free(r);
    *r = t;
    return KV_OK;
}
