/* gen.h - synthetic kvtrace generators (`kvstream gen`).
 *
 * Every number is a counter-based hash of (seed, object, stream, row,
 * column), so a trace is bitwise the same whatever the rank count or thread
 * count that wrote it.  Ranks write the token chunks they own
 * (chunk-cyclic) with parallel HDF5. */
#ifndef KVSTREAM_GEN_H
#define KVSTREAM_GEN_H

#include <mpi.h>
#include <stdint.h>
#include "core/kverr.h"

typedef struct {
    const char *kind;      /* gaussian | clustered | jl | sphere */
    const char *out;       /* output path */
    int64_t S, n, m, d, dv;
    int every_position;    /* one query per position: m = n */
    int64_t clusters;      /* clustered: mixture components */
    double spread;         /* clustered: std of a key around its centre */
    double value_noise;    /* clustered: std of a value around its cluster's value centre */
    double beta;           /* jl: query = beta * target key */
    double radius;         /* sphere: radius of keys and queries */
    int64_t chunk;         /* token chunk length in the file */
    int float16;           /* write keys/values/queries as IEEE half (--dtype float16) */
    uint64_t seed;
} kv_gen_opts;

void kv_gen_defaults(kv_gen_opts *o);
/* Collective over comm. */
int kv_gen_run(const kv_gen_opts *o, MPI_Comm comm, kv_err *err);
/* Position (prefix length) of query j. */
int64_t kv_gen_query_pos(const kv_gen_opts *o, int64_t j);
/* Kinds, comma separated, for messages. */
const char *kv_gen_kinds(void);

#endif
