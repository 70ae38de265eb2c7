/* buf.h - byte buffers for checkpoints, and readers over bytes.
 *
 * Methods serialise their state with kv_buf_put* and read it back with
 * kv_rd_get*; a reader that runs past its end or meets a bad tag sets an
 * error instead of reading garbage.
 *
 * A kv_buf is one of three kinds, all written with the same kv_buf_put*:
 *   - growable (kv_buf_init): every byte kept in data[0, len);
 *   - bounded (kv_buf_init_bounded): at most `limit` bytes held; each full
 *     piece is handed to a sink and the buffer starts again, so a state of
 *     any size streams out through a fixed buffer (checkpoint writes);
 *   - counting (kv_buf_init_count): nothing stored, only the total (the size
 *     a state will have, learnt before it is written).
 * `total` is the byte count put so far in every kind.
 *
 * A kv_rd reads a view of `len` bytes, either in memory (data) or from a
 * kv_rd_src that refills a window from elsewhere (a checkpoint file, in
 * bounded pieces); kv_rd_sub cuts a length-limited view out of either. */
#ifndef KVSTREAM_BUF_H
#define KVSTREAM_BUF_H

#include <stddef.h>
#include <stdint.h>
#include "core/kverr.h"

/* Takes the n bytes at p, which are bytes [at, at + n) of everything put;
 * nonzero: failed (the buffer is then marked failed). */
typedef int (*kv_buf_sink)(void *ctx, const void *p, size_t n, size_t at);

typedef struct {
    uint8_t *data;
    size_t len, cap;
    int failed;     /* an allocation or the sink failed: the buffer is unusable */
    size_t total;   /* bytes put so far (in a bounded buffer: handed out + len) */
    size_t peak;    /* the most bytes data ever held */
    size_t limit;   /* bounded: pieces of this size go to sink (0: growable) */
    kv_buf_sink sink;
    void *sink_ctx;
    int count_only; /* counting: no bytes kept */
} kv_buf;

void kv_buf_init(kv_buf *b);
/* limit >= 1; the buffer allocates at most limit bytes */
void kv_buf_init_bounded(kv_buf *b, size_t limit, kv_buf_sink sink, void *ctx);
void kv_buf_init_count(kv_buf *b);
/* Bounded: hand what is held to the sink (the last piece). */
void kv_buf_flush(kv_buf *b);
void kv_buf_free(kv_buf *b);
void kv_buf_put(kv_buf *b, const void *p, size_t n);
void kv_buf_put_i64(kv_buf *b, int64_t v);
void kv_buf_put_f64(kv_buf *b, double v);
/* an array: its length (int64) then its bytes */
void kv_buf_put_arr(kv_buf *b, const void *p, size_t n);

/* A state's save function (methods/method.h: deterministic, reads only). */
typedef void (*kv_buf_saver)(const void *obj, kv_buf *out);
/* What kv_buf_put_arr would write of the bytes save(obj) appends, without
 * a copy of them: a counting walk gives the length, then save writes
 * straight into b (a second walk that gives another length fails b). */
void kv_buf_put_saved(kv_buf *b, kv_buf_saver save, const void *obj);

/* Where a refilling reader's bytes come from: fill reads n bytes at offset
 * at of a source of `size` bytes into dst.  The window win[0, wcap) holds
 * the bytes [wat, wat + wlen); reads of at least wcap bytes bypass it. */
typedef struct {
    int (*fill)(void *ctx, void *dst, size_t n, size_t at, kv_err *err);
    void *ctx;
    size_t size;
    uint8_t *win;
    size_t wcap, wat, wlen;
    size_t peak;    /* the most bytes the window held */
} kv_rd_src;

typedef struct {
    const uint8_t *data; /* in memory: the view's bytes (NULL with src) */
    size_t len, pos;
    const char *what; /* for messages: which state is being read */
    kv_rd_src *src;   /* NULL: in memory */
    size_t base;      /* with src: the view's first byte in the source */
} kv_rd;

/* A source over fill with a window of wcap bytes (malloc'ed; free with
 * kv_rd_src_free) and the reader of all of it. */
int kv_rd_src_init(kv_rd_src *s, size_t size, size_t wcap, int (*fill)(void *, void *, size_t, size_t, kv_err *),
                   void *ctx, kv_err *err);
void kv_rd_src_free(kv_rd_src *s);
kv_rd kv_rd_of_src(kv_rd_src *s, const char *what);

int kv_rd_get(kv_rd *r, void *p, size_t n, kv_err *err);
int kv_rd_i64(kv_rd *r, int64_t *v, kv_err *err);
int kv_rd_f64(kv_rd *r, double *v, kv_err *err);
/* the next n bytes of r as a reader of their own (r moves past them);
 * KV_EINPUT "... truncated" when fewer are left */
int kv_rd_sub(kv_rd *r, size_t n, kv_rd *sub, kv_err *err);
/* the length of an array written by kv_buf_put_arr, in elems (a multiple
 * of elem bytes, at most max_elems, no more than what is left); its bytes
 * follow, for kv_rd_get into storage of the caller's choosing */
int kv_rd_arr_len(kv_rd *r, size_t elem, size_t max_elems, size_t *count, kv_err *err);
/* an array written by kv_buf_put_arr: malloc'ed into *p (NULL when empty);
 * its byte length must be a multiple of elem and at most max_elems elems */
int kv_rd_arr(kv_rd *r, void **p, size_t elem, size_t max_elems, size_t *count, kv_err *err);
/* an array written by kv_buf_put_arr of exactly `bytes` bytes, into dst
 * (storage the reader owns): any other length is KV_EINPUT */
int kv_rd_arr_to(kv_rd *r, void *dst, size_t bytes, kv_err *err);

#endif
