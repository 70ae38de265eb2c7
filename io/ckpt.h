/* ckpt.h - checkpoint files for `replay --checkpoint/--resume`.
 *
 * One HDF5 file written collectively with parallel HDF5: every rank's state
 * is an opaque byte string (built by src/replay/ckptstate.c and the methods' save
 * functions); /state holds them back to back, /offsets [P+1] says where each
 * rank's starts.  Each rank writes and reads its string in pieces at
 * offsets (independent hyperslab I/O), so no rank needs it whole in memory.  The identity of the run (trace fingerprint, method list,
 * rank count, ...) is in root attributes and checked on resume.  Writing
 * goes to FILE.tmp, which rank 0 renames to FILE after the collective
 * close: a crash mid-write leaves the previous checkpoint intact. */
#ifndef KVSTREAM_CKPT_H
#define KVSTREAM_CKPT_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>
#include "core/kverr.h"

typedef struct {
    char trace[1024];     /* path as given (informative) */
    char methods[1024];   /* --methods */
    char semantics[64];
    char out[1024];       /* results file, "" if none */
    int64_t ranks, S, n, m, d, dv, seed, window, batch, shard_chunk, bound_ratio;
    int64_t fingerprint;  /* hash of the trace's shape, query positions and first rows */
    int64_t next_query;   /* queries [0, next_query) are done */
    int64_t reference;    /* replay --reference: 0 memory, 1 stream, 2 none */
} kv_ckpt_meta;

/* Writing, in bounded pieces: kv_ckpt_create (collective, every rank's
 * state length known: ckptstate counts it first) makes FILE.tmp and /state;
 * kv_ckpt_put (independent) writes bytes [at, at + n) of this rank's state;
 * kv_ckpt_finish (collective, also after a failure: failed nonzero) writes
 * the metadata, closes and renames FILE.tmp to FILE unless some rank failed.
 * Errors of finish are agreed. */
typedef struct kv_ckpt_writer kv_ckpt_writer;
int kv_ckpt_create(const char *path, MPI_Comm comm, size_t len, kv_ckpt_writer **w, kv_err *err);
int kv_ckpt_put(kv_ckpt_writer *w, const void *p, size_t n, size_t at, kv_err *err);
int kv_ckpt_finish(kv_ckpt_writer *w, const kv_ckpt_meta *meta, int failed, kv_err *err);

/* Reading, in bounded pieces.  kv_ckpt_open (collective) checks the file
 * against `want` (everything but next_query and the paths must match),
 * fills *got and gives this rank's state length; kv_ckpt_get (independent)
 * reads bytes [at, at + n) of it; kv_ckpt_close (collective) closes. */
typedef struct kv_ckpt_reader kv_ckpt_reader;
int kv_ckpt_open(const char *path, MPI_Comm comm, const kv_ckpt_meta *want, kv_ckpt_meta *got, kv_ckpt_reader **rd,
                 size_t *len, kv_err *err);
int kv_ckpt_get(kv_ckpt_reader *rd, void *dst, size_t n, size_t at, kv_err *err);
void kv_ckpt_close(kv_ckpt_reader *rd);

#endif
