/* buf.c - byte buffers for checkpoints. */
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"

void kv_buf_init(kv_buf *b) { memset(b, 0, sizeof *b); }

void kv_buf_free(kv_buf *b)
{
    free(b->data);
    kv_buf_init(b);
}

void kv_buf_put(kv_buf *b, const void *p, size_t n)
{
    if (b->failed || n == 0) return;
    if (b->len + n > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->len + n) c *= 2;
        uint8_t *d = realloc(b->data, c);
        if (!d) { b->failed = 1; return; }
        b->data = d;
        b->cap = c;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void kv_buf_put_i64(kv_buf *b, int64_t v) { kv_buf_put(b, &v, sizeof v); }
void kv_buf_put_f64(kv_buf *b, double v) { kv_buf_put(b, &v, sizeof v); }

void kv_buf_put_arr(kv_buf *b, const void *p, size_t n)
{
    kv_buf_put_i64(b, (int64_t)n);
    kv_buf_put(b, p, n);
}

int kv_rd_get(kv_rd *r, void *p, size_t n, kv_err *err)
{
    if (n > r->len - r->pos)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state is truncated", r->what ? r->what : "a");
    memcpy(p, r->data + r->pos, n);
    r->pos += n;
    return KV_OK;
}

int kv_rd_i64(kv_rd *r, int64_t *v, kv_err *err) { return kv_rd_get(r, v, sizeof *v, err); }
int kv_rd_f64(kv_rd *r, double *v, kv_err *err) { return kv_rd_get(r, v, sizeof *v, err); }

int kv_rd_arr(kv_rd *r, void **p, size_t elem, size_t max_elems, size_t *count, kv_err *err)
{
    int64_t n = 0;
    *p = NULL;
    *count = 0;
    if (kv_rd_i64(r, &n, err)) return err->code;
    if (n < 0 || (size_t)n > r->len - r->pos || (size_t)n % elem || (size_t)n / elem > max_elems)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad array length", r->what ? r->what : "a");
    if (n == 0) return KV_OK;
    *p = malloc((size_t)n);
    if (!*p) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    memcpy(*p, r->data + r->pos, (size_t)n);
    r->pos += (size_t)n;
    *count = (size_t)n / elem;
    return KV_OK;
}
