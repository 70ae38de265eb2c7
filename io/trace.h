/* trace.h - read and write kvtrace files (docs/TRACE_FORMAT.md, v1).
 *
 * Reader: kv_trace_open is collective over comm (parallel HDF5, MPI-IO
 * driver).  It checks every piece of metadata (format, version, datasets,
 * types, ranks, shapes, dims that disagree, query_pos range and order) and
 * returns one-line errors naming file, object and problem; it never lets
 * HDF5 print its error stack.  Reads of keys/values/queries are independent
 * hyperslab reads of any token or query range, converted to float32 (from
 * float16, float32 or float64 on disk; HDF5 converts) and
 * checked for non-finite numbers as they stream through.
 *
 * Writer: kv_trace_create is collective over comm (or serial when comm is
 * MPI_COMM_NULL); writes are independent hyperslab writes, so any rank may
 * write any range; close is collective. */
#ifndef KVSTREAM_TRACE_H
#define KVSTREAM_TRACE_H

#include <mpi.h>
#include <stdint.h>
#include "core/kverr.h"

typedef struct {
    int64_t S, n, m;       /* streams, tokens, queries */
    int64_t d, dv;         /* key and value dimension */
    double scale;          /* logit scale (attribute, else 1/sqrt(d)) */
    int64_t chunk;         /* token-axis chunk of /keys (0: contiguous) */
    int has_tokens, has_model_outputs, has_query_target;
    char source[256];      /* attribute source, "" if absent */
    int64_t seed;          /* attribute seed, -1 if absent */
    int64_t n_layers, n_heads, n_kv_heads, head_dim; /* -1 if absent */
    int kv_float16;        /* /keys and /values are IEEE half on disk (every value a float16) */
} kv_trace_info;

typedef struct kv_trace kv_trace;

/* ---- reader ---- */
kv_trace *kv_trace_open(const char *path, MPI_Comm comm, kv_err *err);
const kv_trace_info *kv_trace_get_info(const kv_trace *t);
const int64_t *kv_trace_query_pos(const kv_trace *t);   /* m entries */
const char *kv_trace_path(const kv_trace *t);
/* Tokens [i0, i0+cnt) of every stream: K [S][cnt][d], V [S][cnt][dv]. */
int kv_trace_read_kv(kv_trace *t, int64_t i0, int64_t cnt, float *K, float *V, kv_err *err);
/* Queries [j0, j0+cnt) of every stream: Q [S][cnt][d]. */
int kv_trace_read_queries(kv_trace *t, int64_t j0, int64_t cnt, float *Q, kv_err *err);
/* Optional datasets; an error if absent.  [S][cnt][dv] and [S][cnt]. */
int kv_trace_read_model_outputs(kv_trace *t, int64_t j0, int64_t cnt, float *Z, kv_err *err);
int kv_trace_read_query_target(kv_trace *t, int64_t j0, int64_t cnt, int64_t *tgt, kv_err *err);
/* Describe storage (dtype, chunking, filters, attributes) for `kvstream info`. */
int kv_trace_describe(kv_trace *t, char *buf, size_t len);
void kv_trace_close(kv_trace *t);

/* ---- writer ---- */
typedef struct {
    int64_t S, n, m, d, dv;
    int64_t chunk;          /* token-axis chunk length, 0 = default 4096 */
    double scale;           /* <= 0: not written (readers use 1/sqrt(d)) */
    const char *source;     /* NULL: not written */
    int64_t seed;           /* < 0: not written */
    int with_tokens;        /* create /tokens int32 [n] */
    int with_model_outputs; /* create /model_outputs float32 [S, m, dv] */
    int with_query_target;  /* create /query_target int64 [S, m] */
    int float16;            /* keys/values/queries as IEEE half (else float32);
                             * a value float16 cannot hold is refused (KV_EINPUT) */
    int64_t n_layers, n_heads, n_kv_heads, head_dim; /* < 0: not written */
} kv_trace_spec;

typedef struct kv_trace_writer kv_trace_writer;

kv_trace_writer *kv_trace_create(const char *path, MPI_Comm comm, const kv_trace_spec *spec, kv_err *err);
/* rows [i0, i0+cnt) of stream s: K cnt x d, V cnt x dv */
int kv_trace_write_kv(kv_trace_writer *w, int64_t s, int64_t i0, int64_t cnt,
                      const float *K, const float *V, kv_err *err);
/* queries [j0, j0+cnt) of stream s: Q cnt x d */
int kv_trace_write_queries(kv_trace_writer *w, int64_t s, int64_t j0, int64_t cnt, const float *Q, kv_err *err);
int kv_trace_write_query_pos(kv_trace_writer *w, int64_t j0, int64_t cnt, const int64_t *pos, kv_err *err);
int kv_trace_write_tokens(kv_trace_writer *w, int64_t i0, int64_t cnt, const int32_t *tok, kv_err *err);
int kv_trace_write_model_outputs(kv_trace_writer *w, int64_t s, int64_t j0, int64_t cnt, const float *Z, kv_err *err);
int kv_trace_write_query_target(kv_trace_writer *w, int64_t s, int64_t j0, int64_t cnt, const int64_t *tgt, kv_err *err);
/* Collective; frees w whatever happens. */
int kv_trace_writer_close(kv_trace_writer *w, kv_err *err);

#endif
