/* buf.c - byte buffers (growable, bounded with a sink, counting) and
 * readers (in memory or refilled from a source) for checkpoints. */
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"

void kv_buf_init(kv_buf *b) { memset(b, 0, sizeof *b); }

void kv_buf_init_bounded(kv_buf *b, size_t limit, kv_buf_sink sink, void *ctx)
{
    kv_buf_init(b);
    b->limit = limit ? limit : 1;
    b->sink = sink;
    b->sink_ctx = ctx;
}

void kv_buf_init_count(kv_buf *b)
{
    kv_buf_init(b);
    b->count_only = 1;
}

void kv_buf_free(kv_buf *b)
{
    free(b->data);
    kv_buf_init(b);
}

/* room for len + n bytes (bounded: len + n <= limit, never more than limit) */
static int reserve(kv_buf *b, size_t n)
{
    if (b->len + n <= b->cap) return 0;
    size_t c = b->cap ? b->cap : 256;
    while (c < b->len + n) c *= 2;
    if (b->limit && c > b->limit) c = b->limit;
    uint8_t *d = realloc(b->data, c);
    if (!d) { b->failed = 1; return -1; }
    b->data = d;
    b->cap = c;
    return 0;
}

/* bounded: what is held goes to the sink; the buffer starts again */
void kv_buf_flush(kv_buf *b)
{
    if (b->failed || !b->limit || !b->len) return;
    if (!b->sink || b->sink(b->sink_ctx, b->data, b->len, b->total - b->len)) b->failed = 1;
    b->len = 0;
}

void kv_buf_put(kv_buf *b, const void *p, size_t n)
{
    if (b->failed || n == 0) return;
    if (b->count_only) { b->total += n; return; }
    const uint8_t *s = p;
    while (n) {
        size_t k = n;
        if (b->limit) {
            if (b->len == b->limit) kv_buf_flush(b);
            if (b->failed) return;
            if (k > b->limit - b->len) k = b->limit - b->len;
        }
        if (reserve(b, k)) return;
        memcpy(b->data + b->len, s, k);
        b->len += k;
        b->total += k;
        if (b->len > b->peak) b->peak = b->len;
        s += k;
        n -= k;
    }
}

void kv_buf_put_i64(kv_buf *b, int64_t v) { kv_buf_put(b, &v, sizeof v); }
void kv_buf_put_f64(kv_buf *b, double v) { kv_buf_put(b, &v, sizeof v); }

void kv_buf_put_arr(kv_buf *b, const void *p, size_t n)
{
    kv_buf_put_i64(b, (int64_t)n);
    kv_buf_put(b, p, n);
}

void kv_buf_put_saved(kv_buf *b, kv_buf_saver save, const void *obj)
{
    if (b->failed) return;
    kv_buf c;
    kv_buf_init_count(&c);
    if (!b->count_only) save(obj, &c); /* a counting b needs no length */
    if (c.failed) { b->failed = 1; return; }
    kv_buf_put_i64(b, (int64_t)c.total);
    size_t at = b->total;
    save(obj, b);
    if (!b->failed && !b->count_only && b->total - at != c.total) b->failed = 1; /* save is not deterministic */
}

int kv_rd_src_init(kv_rd_src *s, size_t size, size_t wcap, int (*fill)(void *, void *, size_t, size_t, kv_err *),
                   void *ctx, kv_err *err)
{
    memset(s, 0, sizeof *s);
    s->fill = fill;
    s->ctx = ctx;
    s->size = size;
    s->wcap = wcap < size ? wcap : size; /* no window larger than the source */
    if (!s->wcap) s->wcap = 1;
    s->win = malloc(s->wcap);
    if (!s->win) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    return KV_OK;
}

void kv_rd_src_free(kv_rd_src *s)
{
    free(s->win);
    s->win = NULL;
    s->wcap = s->wlen = 0;
}

kv_rd kv_rd_of_src(kv_rd_src *s, const char *what)
{
    return (kv_rd){ .data = NULL, .len = s->size, .pos = 0, .what = what, .src = s, .base = 0 };
}

/* n bytes at offset at of the source, through the window */
static int src_read(kv_rd_src *s, uint8_t *p, size_t n, size_t at, kv_err *err)
{
    while (n) {
        if (at >= s->wat && at < s->wat + s->wlen) {
            size_t k = s->wat + s->wlen - at;
            if (k > n) k = n;
            memcpy(p, s->win + (at - s->wat), k);
            p += k;
            at += k;
            n -= k;
            continue;
        }
        if (n >= s->wcap) return s->fill(s->ctx, p, n, at, err); /* large: straight into p */
        size_t k = s->size - at < s->wcap ? s->size - at : s->wcap;
        s->wlen = 0;
        if (s->fill(s->ctx, s->win, k, at, err)) return err->code;
        s->wat = at;
        s->wlen = k;
        if (k > s->peak) s->peak = k;
    }
    return KV_OK;
}

int kv_rd_get(kv_rd *r, void *p, size_t n, kv_err *err)
{
    if (n > r->len - r->pos)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state is truncated", r->what ? r->what : "a");
    if (n == 0) return KV_OK;
    if (r->src) {
        if (src_read(r->src, p, n, r->base + r->pos, err)) return err->code;
    } else {
        memcpy(p, r->data + r->pos, n);
    }
    r->pos += n;
    return KV_OK;
}

int kv_rd_i64(kv_rd *r, int64_t *v, kv_err *err) { return kv_rd_get(r, v, sizeof *v, err); }
int kv_rd_f64(kv_rd *r, double *v, kv_err *err) { return kv_rd_get(r, v, sizeof *v, err); }

int kv_rd_sub(kv_rd *r, size_t n, kv_rd *sub, kv_err *err)
{
    if (n > r->len - r->pos)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state is truncated", r->what ? r->what : "a");
    *sub = (kv_rd){ .data = r->data ? r->data + r->pos : NULL, .len = n, .pos = 0, .what = r->what, .src = r->src,
                    .base = r->base + r->pos };
    r->pos += n;
    return KV_OK;
}

int kv_rd_arr_len(kv_rd *r, size_t elem, size_t max_elems, size_t *count, kv_err *err)
{
    int64_t n = 0;
    *count = 0;
    if (kv_rd_i64(r, &n, err)) return err->code;
    if (n < 0 || (size_t)n > r->len - r->pos || (size_t)n % elem || (size_t)n / elem > max_elems)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s state has a bad array length", r->what ? r->what : "a");
    *count = (size_t)n / elem;
    return KV_OK;
}

int kv_rd_arr(kv_rd *r, void **p, size_t elem, size_t max_elems, size_t *count, kv_err *err)
{
    size_t c;
    *p = NULL;
    *count = 0;
    if (kv_rd_arr_len(r, elem, max_elems, &c, err)) return err->code;
    if (c == 0) return KV_OK;
    *p = malloc(c * elem);
    if (!*p) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    if (kv_rd_get(r, *p, c * elem, err)) {
        free(*p);
        *p = NULL;
        return err->code;
    }
    *count = c;
    return KV_OK;
}

int kv_rd_arr_to(kv_rd *r, void *dst, size_t bytes, kv_err *err)
{
    int64_t n;
    if (kv_rd_i64(r, &n, err)) return err->code;
    if (n < 0 || (uint64_t)n != bytes)
        return kv_seterr(err, KV_EINPUT, "checkpoint: %s has the wrong size", r->what ? r->what : "an array");
    return kv_rd_get(r, dst, bytes, err);
}
