/* ckpt.h - checkpoint files for `replay --checkpoint/--resume`.
 *
 * One HDF5 file written collectively with parallel HDF5: every rank's state
 * is an opaque byte string (built by src/replay/ckptstate.c and the methods' save
 * functions); /state holds them back to back, /offsets [P+1] says where each
 * rank's starts.  The identity of the run (trace fingerprint, method list,
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

/* Collective.  blob/len: this rank's state. */
int kv_ckpt_write(const char *path, MPI_Comm comm, const kv_ckpt_meta *meta, const void *blob, size_t len, kv_err *err);

/* Collective.  Checks the file against `want` (everything but next_query and
 * the paths must match), fills *got, and gives this rank its state in a
 * malloc'ed *blob. */
int kv_ckpt_read(const char *path, MPI_Comm comm, const kv_ckpt_meta *want, kv_ckpt_meta *got, void **blob,
                 size_t *len, kv_err *err);

#endif
