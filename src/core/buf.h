/* buf.h - a growable byte buffer for checkpoints, and a reader over bytes.
 *
 * Methods serialise their state with kv_buf_put* and read it back with
 * kv_rd_get*; a reader that runs past its end or meets a bad tag sets an
 * error instead of reading garbage. */
#ifndef KVSTREAM_BUF_H
#define KVSTREAM_BUF_H

#include <stddef.h>
#include <stdint.h>
#include "core/kverr.h"

typedef struct {
    uint8_t *data;
    size_t len, cap;
    int failed;     /* an allocation failed: the buffer is unusable */
} kv_buf;

void kv_buf_init(kv_buf *b);
void kv_buf_free(kv_buf *b);
void kv_buf_put(kv_buf *b, const void *p, size_t n);
void kv_buf_put_i64(kv_buf *b, int64_t v);
void kv_buf_put_f64(kv_buf *b, double v);
/* an array: its length (int64) then its bytes */
void kv_buf_put_arr(kv_buf *b, const void *p, size_t n);

typedef struct {
    const uint8_t *data;
    size_t len, pos;
    const char *what; /* for messages: which state is being read */
} kv_rd;

int kv_rd_get(kv_rd *r, void *p, size_t n, kv_err *err);
int kv_rd_i64(kv_rd *r, int64_t *v, kv_err *err);
int kv_rd_f64(kv_rd *r, double *v, kv_err *err);
/* an array written by kv_buf_put_arr: malloc'ed into *p (NULL when empty);
 * its byte length must be a multiple of elem and at most max_elems elems */
int kv_rd_arr(kv_rd *r, void **p, size_t elem, size_t max_elems, size_t *count, kv_err *err);

#endif
