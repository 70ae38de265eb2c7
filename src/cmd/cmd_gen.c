/* cmd_gen.c - `kvstream gen`: write a synthetic kvtrace (src/synth/gen.c). */
#include <math.h>
#include <stdio.h>
#include "cmd/cmd.h"
#include "mpi/agree.h"
#include "synth/gen.h"

#define G(member) KV_AT(kv_gen_opts, member)

/* shared with sweep (cmd.h) */
const kv_opt kv_gen_opt_table[] = {
    { "kind", 0, KV_OPT_STRING, G(kind), .meta = "gaussian|clustered|jl|sphere|index|packing|needle",
      .help = "what to generate (index, packing: the lower-bound constructions; needle: the time barrier's; docs/ALGORITHMS.md)" },
    { "streams", 0, KV_OPT_INT, G(S), .lo = 1, .hi = 1 << 20, .meta = "S", .help = "independent streams (kv heads)" },
    { "queries", 0, KV_OPT_INT, G(m), .lo = 1, .hi = INT64_C(1) << 40, .meta = "m",
      .help = "queries per stream, spread evenly over the tokens" },
    { "clusters", 0, KV_OPT_INT, G(clusters), .lo = 1, .hi = INT64_C(1) << 40, .meta = "C",
      .help = "clustered: mixture components" },
    { "spread", 0, KV_OPT_DOUBLE, G(spread), .meta = "s", .help = "clustered: std of a key around its centre" },
    { "value-noise", 0, KV_OPT_DOUBLE, G(value_noise), .meta = "v",
      .help = "clustered: std of a value around its cluster's value" },
    { "beta", 0, KV_OPT_DOUBLE, G(beta), .dlo = 0, .dhi = INFINITY, .meta = "b", .def = "sqrt(d) (2 ln n + 3)",
      .help = "jl: query = beta * its target key (index, packing, needle pick their own and record it)" },
    { "query-at", 0, KV_OPT_CHOICE, G(query_at), .choices = "auto|end|spread|last",
      .help = "end: every query a probe at position n (the state after the stream); last: at the last m positions; "
              "spread: over the prefixes; auto: end for index, packing and needle, spread for the others" },
    { "theta", 0, KV_OPT_DOUBLE, G(theta), .meta = "rad", .help = "packing: least angle between two points" },
    { "points", 0, KV_OPT_INT, G(points), .lo = 2, .hi = INT64_C(1) << 24, .meta = "N",
      .help = "packing: at most N points (fewer when the theta-packing fills up first)" },
    { "radius", 0, KV_OPT_DOUBLE, G(radius), .meta = "r", .help = "sphere: radius of keys and queries" },
    { "seed", 0, KV_OPT_INT, G(seed), .lo = 0, .hi = INT64_MAX, .meta = "X",
      .help = "every number is a hash of (seed, stream, row, column)" },
    { 0 } };

static const kv_opt gen_table[] = {
    { "output", 'o', KV_OPT_STRING, G(out), .meta = "FILE", .def = "required", .help = "the trace to write" },
    { "tokens", 0, KV_OPT_INT, G(n), .lo = 1, .hi = INT64_C(1) << 40, .meta = "n", .help = "tokens per stream" },
    { "dim", 0, KV_OPT_INT, G(d), .lo = 1, .hi = 65536, .meta = "d", .help = "key and query dimension" },
    { "dv", 0, KV_OPT_INT, G(dv), .lo = 1, .hi = 65536, .meta = "dv", .def = "d", .help = "value dimension" },
    { "every-position", 0, KV_OPT_FLAG, G(every_position), .lo = 1,
      .help = "one query per position (m = n) instead of --queries" },
    { "chunk", 0, KV_OPT_INT, G(chunk), .lo = 1, .hi = INT64_C(1) << 30, .meta = "C",
      .help = "token-axis chunk of the file" },
    { "dtype", 0, KV_OPT_CHOICE, G(float16), .choices = "float32|float16",
      .help = "keys/values/queries on disk; float16 refuses a value beyond +-65504" },
    { 0 } };

int kv_run_gen(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, help;
    MPI_Comm_rank(comm, &rank);
    kv_gen_opts o;
    kv_gen_defaults(&o);
    kv_cmdline c = {
        .cmd = "gen",
        .usage = "--kind KIND --tokens n --dim d (--queries m | --every-position) -o FILE [options]",
        .about = "Write a synthetic kvtrace with parallel HDF5; the file is bitwise the same for any rank count.",
        .groups = { { "trace", gen_table, &o }, { "generator", kv_gen_opt_table, &o } },
    };
    kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, NULL, &help, err);
    if (kv_agree(comm, err) || help) return err->code;
    kv_gen_picked pk;
    kv_gen_run_picked(&o, comm, &pk, err);
    if (kv_agree(comm, err)) return err->code;
    if (rank == 0) {
        printf("wrote %s: %s, %lld streams x %lld tokens, d %lld, %lld queries%s\n", o.out, o.kind, (long long)o.S,
               (long long)o.n, (long long)o.d, (long long)(o.every_position ? o.n : o.m), o.float16 ? ", float16" : "");
        if (pk.beta >= 0) printf("picked beta %.6g (least target mass %.4f)", pk.beta, pk.target_mass_min);
        if (pk.points > 0) printf(", N = %lld points, theta %.4f rad", (long long)pk.points, pk.theta);
        if (pk.beta >= 0) printf("\n");
    }
    return KV_OK;
}
