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
    const char *kind;      /* gaussian | clustered | jl | sphere | index | packing | needle */
    const char *out;       /* output path */
    int64_t S, n, m, d, dv;
    int every_position;    /* one query per position: m = n */
    int64_t clusters;      /* clustered: mixture components */
    double spread;         /* clustered: std of a key around its centre */
    double value_noise;    /* clustered: std of a value around its cluster's value centre */
    double beta;           /* jl: query = beta * target key */
    double radius;         /* sphere: radius of keys and queries */
    int query_at;          /* KV_QAT_AUTO (end for index/packing, else spread) | _END | _SPREAD | _LAST */
    double theta;          /* packing: least angle between two points (radians) */
    int64_t points;        /* packing: cap on the number of points N */
    int64_t chunk;         /* token chunk length in the file */
    int float16;           /* write keys/values/queries as IEEE half (--dtype float16) */
    uint64_t seed;
} kv_gen_opts;

/* where the queries sit: END every one at position n (probes of the state
 * after the stream), LAST at the last m positions n-m+1 .. n, SPREAD evenly */
enum { KV_QAT_AUTO = 0, KV_QAT_END = 1, KV_QAT_SPREAD = 2, KV_QAT_LAST = 3 };

/* What the generator picked for a trace (also written as root attributes):
 * index and packing only, else the fields stay as kv_gen_defaults left them. */
typedef struct {
    double beta;            /* index, packing: query = beta sqrt(d) * target key (logit beta on the target) */
    double target_mass_min; /* exact attention's least softmax mass on the probe's target (over probes, streams) */
    int64_t points;         /* packing: N, the points of the packing (stream 0; every stream has its own set) */
    double theta;           /* packing: least angle between two of its points, min over streams */
} kv_gen_picked;

void kv_gen_defaults(kv_gen_opts *o);
/* Collective over comm. */
int kv_gen_run(const kv_gen_opts *o, MPI_Comm comm, kv_err *err);
/* The same, returning what was picked (picked may be NULL). */
int kv_gen_run_picked(const kv_gen_opts *o, MPI_Comm comm, kv_gen_picked *picked, kv_err *err);
/* Position (prefix length) of query j: n for every query when they are
 * probes at the end, n - m + 1 + j (at least 1) for the last positions, else
 * spread evenly (or j + 1 with every_position). */
int64_t kv_gen_query_pos(const kv_gen_opts *o, int64_t j);
/* "end", "last" or "spread" (every_position: "spread"), auto resolved by kind. */
const char *kv_gen_query_at_name(const kv_gen_opts *o);
/* Kinds, comma separated, for messages. */
const char *kv_gen_kinds(void);

#endif
