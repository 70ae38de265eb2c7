/* main.c - the kvstream command line: option parsing and dispatch only.
 *
 *   kvstream gen     synthetic traces          (src/synth/gen.c)
 *   kvstream info    describe and validate     (io/trace.c)
 *   kvstream replay  run methods over a trace  (src/replay/replay.c)
 *   kvstream record  trace a llama2.c model    (src/cmd/record.c)
 *
 * Every command runs under MPI (a plain ./kvstream is a 1-rank job).  Errors
 * are agreed across ranks (mpi/agree.h); rank 0 prints the one line and all
 * ranks exit with the same status: 2 for bad input, 1 for anything else. */
#include <errno.h>
#include <getopt.h>
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mpi/agree.h"
#include "mpi/coll.h"
#include "cmd/record.h"
#include "synth/gen.h"
#include "replay/replay.h"
#include "cmd/sweep.h"
#include "io/trace.h"

static int opt_i64(const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out, kv_err *err)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s) return kv_seterr(err, KV_EINPUT, "%s: '%s' is not an integer", opt, s);
    if (v < lo || v > hi)
        return kv_seterr(err, KV_EINPUT, "%s: %lld is out of range [%lld, %lld]", opt, v, (long long)lo, (long long)hi);
    *out = v;
    return KV_OK;
}

static int opt_f64(const char *opt, const char *s, double *out, kv_err *err)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v)) return kv_seterr(err, KV_EINPUT, "%s: '%s' is not a finite number", opt, s);
    *out = v;
    return KV_OK;
}

/* sizes: 123, 64K, 512M, 2G (powers of 1024) */
static int opt_size(const char *opt, const char *s, int64_t *out, kv_err *err)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    double mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1024.0, end++;
    else if (*end == 'M' || *end == 'm') mul = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mul = 1024.0 * 1024 * 1024, end++;
    if (errno || end == s || *end || !(v > 0) || v * mul > 9e18)
        return kv_seterr(err, KV_EINPUT, "%s: '%s' is not a size (e.g. 512M, 4G)", opt, s);
    *out = (int64_t)(v * mul);
    return KV_OK;
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvstream <command> [options]   (run under mpirun -np P for P ranks)\n"
        "  gen    --kind gaussian|clustered|jl|sphere --streams S --tokens n --dim d [--dv dv]\n"
        "         --queries m | --every-position  [--clusters C --spread s --value-noise v] [--beta b] [--radius r]\n"
        "         [--chunk C] [--seed X] -o FILE\n"
        "  info   FILE                      shape, storage, attributes and a validation verdict\n"
        "  replay FILE --methods LIST [-o results.h5] [--save-outputs] [--batch B] [--seed X]\n"
        "         [--semantics full|window-unmasked-values --window W] [--shard-chunk C]\n"
        "         [--no-bound-ratio] [--quiet] [--max-memory SIZE]\n"
        "         [--checkpoint FILE [--checkpoint-every N]] [--resume FILE]\n"
        "  sweep  --kind jl|sphere|... --n 512,1024 --d 16,48 --methods 'window:W=@,subgen:delta=1,t=@,s=@'\n"
        "         --eps E [--queries m] [--streams S] [--seed X] [gen options] [--workdir DIR] -o sweep.h5\n"
        "  record --model FILE --tokens N [--prompt-tokens 1,2,3] [--temperature T --seed X] -o FILE\n"
        "  version\n"
        "methods: see README.md (exact is always run as the reference)\n");
}

/* generator options shared by gen and sweep */
#define GEN_SHARED_OPTIONS                                                                                       \
    { "kind", 1, 0, 'k' }, { "streams", 1, 0, 'S' }, { "queries", 1, 0, 'm' }, { "clusters", 1, 0, 'c' },      \
        { "spread", 1, 0, 's' }, { "value-noise", 1, 0, 'V' }, { "beta", 1, 0, 'b' }, { "radius", 1, 0, 'r' }, \
        { "seed", 1, 0, 'x' }

/* 1 if c was one of GEN_SHARED_OPTIONS (handled), 0 otherwise */
static int gen_shared_option(int c, const char *arg, kv_gen_opts *o, kv_err *err)
{
    int64_t v;
    switch (c) {
    case 'k': o->kind = arg; return 1;
    case 'S': opt_i64("--streams", arg, 1, 1 << 20, &o->S, err); return 1;
    case 'm': opt_i64("--queries", arg, 1, INT64_C(1) << 40, &o->m, err); return 1;
    case 'c': opt_i64("--clusters", arg, 1, INT64_C(1) << 40, &o->clusters, err); return 1;
    case 's': opt_f64("--spread", arg, &o->spread, err); return 1;
    case 'V': opt_f64("--value-noise", arg, &o->value_noise, err); return 1;
    case 'b':
        if (!opt_f64("--beta", arg, &o->beta, err) && o->beta < 0) kv_seterr(err, KV_EINPUT, "--beta must be >= 0");
        return 1;
    case 'r': opt_f64("--radius", arg, &o->radius, err); return 1;
    case 'x': if (!opt_i64("--seed", arg, 0, INT64_MAX, &v, err)) o->seed = (uint64_t)v; return 1;
    default: return 0;
    }
}

/* getopt state must be reset between commands; argv[0] is the command */
static int parse_gen(int argc, char **argv, kv_gen_opts *o, kv_err *err)
{
    static const struct option lo[] = {
        GEN_SHARED_OPTIONS, { "tokens", 1, 0, 'n' }, { "dim", 1, 0, 'd' }, { "dv", 1, 0, 'v' },
        { "every-position", 0, 0, 'E' }, { "chunk", 1, 0, 'C' }, { "output", 1, 0, 'o' }, { 0, 0, 0, 0 } };
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:", lo, NULL)) != -1 && !err->code) {
        if (gen_shared_option(c, optarg, o, err)) continue;
        switch (c) {
        case 'n': opt_i64("--tokens", optarg, 1, INT64_C(1) << 40, &o->n, err); break;
        case 'd': opt_i64("--dim", optarg, 1, 65536, &o->d, err); break;
        case 'v': opt_i64("--dv", optarg, 1, 65536, &o->dv, err); break;
        case 'E': o->every_position = 1; break;
        case 'C': opt_i64("--chunk", optarg, 1, INT64_C(1) << 30, &o->chunk, err); break;
        case 'o': o->out = optarg; break;
        case ':': kv_seterr(err, KV_EINPUT, "gen: option %s needs a value", argv[optind - 1]); break;
        default: kv_seterr(err, KV_EINPUT, "gen: unknown option '%s'", argv[optind - 1]); break;
        }
    }
    if (!err->code && optind < argc) kv_seterr(err, KV_EINPUT, "gen: unexpected argument '%s'", argv[optind]);
    return err->code;
}

static int parse_replay(int argc, char **argv, kv_replay_opts *o, kv_err *err)
{
    static const struct option lo[] = {
        { "methods", 1, 0, 'M' }, { "output", 1, 0, 'o' }, { "save-outputs", 0, 0, 'O' }, { "batch", 1, 0, 'B' },
        { "seed", 1, 0, 'x' }, { "semantics", 1, 0, 'e' }, { "window", 1, 0, 'W' }, { "shard-chunk", 1, 0, 'C' },
        { "no-bound-ratio", 0, 0, 'N' }, { "quiet", 0, 0, 'q' }, { "checkpoint", 1, 0, 'K' },
        { "checkpoint-every", 1, 0, 'k' }, { "resume", 1, 0, 'R' }, { "max-memory", 1, 0, 'X' }, { 0, 0, 0, 0 } };
    int c;
    int64_t v;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:q", lo, NULL)) != -1 && !err->code) {
        switch (c) {
        case 'M': o->methods = optarg; break;
        case 'o': o->out = optarg; break;
        case 'O': o->save_outputs = 1; break;
        case 'B': if (!opt_i64("--batch", optarg, 1, 1 << 20, &v, err)) o->batch = (int)v; break;
        case 'x': if (!opt_i64("--seed", optarg, 0, INT64_MAX, &v, err)) o->seed = (uint64_t)v; break;
        case 'e':
            if (!strcmp(optarg, "full")) o->semantics = KV_SEM_FULL;
            else if (!strcmp(optarg, "window-unmasked-values")) o->semantics = KV_SEM_WINDOW_UNMASKED;
            else kv_seterr(err, KV_EINPUT, "--semantics: '%s' is not one of full, window-unmasked-values", optarg);
            break;
        case 'W': opt_i64("--window", optarg, 1, INT64_C(1) << 40, &o->window, err); break;
        case 'C': opt_i64("--shard-chunk", optarg, 1, INT64_C(1) << 30, &o->shard_chunk, err); break;
        case 'N': o->bound_ratio = 0; break;
        case 'q': o->quiet = 1; break;
        case 'K': o->checkpoint = optarg; break;
        case 'k': opt_i64("--checkpoint-every", optarg, 1, INT64_C(1) << 40, &o->checkpoint_every, err); break;
        case 'R': o->resume = optarg; break;
        case 'X': opt_size("--max-memory", optarg, &o->max_memory, err); break;
        case ':': kv_seterr(err, KV_EINPUT, "replay: option %s needs a value", argv[optind - 1]); break;
        default: kv_seterr(err, KV_EINPUT, "replay: unknown option '%s'", argv[optind - 1]); break;
        }
    }
    if (err->code) return err->code;
    if (optind != argc - 1) return kv_seterr(err, KV_EINPUT, "replay: expected exactly one trace file (got %d)", argc - optind);
    o->trace = argv[optind];
    if (!o->methods) o->methods = "exact";
    if (o->window && o->semantics != KV_SEM_WINDOW_UNMASKED)
        return kv_seterr(err, KV_EINPUT, "--window only applies with --semantics window-unmasked-values");
    if (o->checkpoint_every && !o->checkpoint)
        return kv_seterr(err, KV_EINPUT, "--checkpoint-every needs --checkpoint FILE");
    /* test hook (documented in tests/check_checkpoint.py): stop as if
     * SIGTERM arrived once this many queries are done */
    const char *stop = getenv("KVSTREAM_TEST_STOP_AT");
    if (stop && opt_i64("KVSTREAM_TEST_STOP_AT", stop, 1, INT64_MAX, &o->stop_after, err)) return err->code;
    return KV_OK;
}

static int opt_list(const char *opt, const char *s, int64_t *out, int max, int *count, kv_err *err)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    *count = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (*count == max) return kv_seterr(err, KV_EINPUT, "%s: more than %d values", opt, max);
        if (opt_i64(opt, t, 1, INT64_C(1) << 32, &out[(*count)++], err)) return err->code;
    }
    if (!*count) return kv_seterr(err, KV_EINPUT, "%s: empty list", opt);
    return KV_OK;
}

static int parse_sweep(int argc, char **argv, kv_sweep_opts *o, int64_t *ns, int64_t *ds, kv_err *err)
{
    static const struct option lo[] = {
        GEN_SHARED_OPTIONS, { "n", 1, 0, 'n' }, { "d", 1, 0, 'd' }, { "methods", 1, 0, 'M' }, { "eps", 1, 0, 'e' },
        { "workdir", 1, 0, 'w' }, { "keep-traces", 0, 0, 'K' }, { "output", 1, 0, 'o' }, { 0, 0, 0, 0 } };
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:", lo, NULL)) != -1 && !err->code) {
        if (gen_shared_option(c, optarg, &o->gen, err)) continue;
        switch (c) {
        case 'n': opt_list("--n", optarg, ns, 64, &o->nn, err); break;
        case 'd': opt_list("--d", optarg, ds, 64, &o->nd, err); break;
        case 'M': o->methods = optarg; break;
        case 'e': opt_f64("--eps", optarg, &o->eps, err); break;
        case 'w': o->workdir = optarg; break;
        case 'K': o->keep_traces = 1; break;
        case 'o': o->out = optarg; break;
        case ':': kv_seterr(err, KV_EINPUT, "sweep: option %s needs a value", argv[optind - 1]); break;
        default: kv_seterr(err, KV_EINPUT, "sweep: unknown option '%s'", argv[optind - 1]); break;
        }
    }
    if (!err->code && optind < argc) kv_seterr(err, KV_EINPUT, "sweep: unexpected argument '%s'", argv[optind]);
    return err->code;
}

/* kvstream info: metadata checks, then every rank scans its share of the
 * token axis for non-finite numbers. */
static int cmd_info(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    if (argc != 2) kv_seterr(err, KV_EINPUT, "info: expected exactly one trace file");
    if (kv_agree(comm, err)) return err->code;
    kv_trace *t = kv_trace_open(argv[1], comm, err);
    if (kv_agree(comm, err)) {
        if (rank == 0) printf("verdict: INVALID: %s\n", err->msg);
        return err->code;
    }
    const kv_trace_info *in = kv_trace_get_info(t);
    if (rank == 0) {
        char buf[8192];
        kv_trace_describe(t, buf, sizeof buf);
        fputs(buf, stdout);
    }
    int64_t C = in->chunk > 0 ? in->chunk : 4096;
    float *K = kv_malloc(sizeof(float) * (size_t)(in->S * C * in->d), err);
    float *V = kv_malloc(sizeof(float) * (size_t)(in->S * C * in->dv), err);
    float *Q = kv_malloc(sizeof(float) * (size_t)(in->S * C * in->d), err);
    for (int64_t c = rank; !err->code && c * C < in->n; c += P)
        kv_trace_read_kv(t, c * C, in->n - c * C < C ? in->n - c * C : C, K, V, err);
    for (int64_t c = rank; !err->code && c * C < in->m; c += P)
        kv_trace_read_queries(t, c * C, in->m - c * C < C ? in->m - c * C : C, Q, err);
    free(K); free(V); free(Q);
    int rc = kv_agree(comm, err);
    if (rank == 0) {
        if (rc) printf("verdict: INVALID: %s\n", err->msg);
        else printf("verdict: valid kvtrace v1 (all %lld x %lld keys/values and %lld queries finite)\n",
                    (long long)in->S, (long long)in->n, (long long)in->m);
    }
    kv_trace_close(t);
    return rc;
}

int main(int argc, char **argv)
{
    int rank;
    kv_mpi_init(&argc, &argv);
    MPI_Comm comm = MPI_COMM_WORLD;
    MPI_Comm_rank(comm, &rank);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* our messages, not HDF5's stack */
    kv_err err = { 0, "" };
    int rc = KV_OK;
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "gen")) {
        kv_gen_opts o;
        kv_gen_defaults(&o);
        parse_gen(argc - 1, argv + 1, &o, &err);
        if (!kv_agree(comm, &err)) {
            kv_gen_run(&o, comm, &err);
            if (!kv_agree(comm, &err) && rank == 0) {
                kv_gen_opts shown = o;
                if (shown.every_position) shown.m = shown.n;
                printf("wrote %s: %s, %lld streams x %lld tokens, d %lld, %lld queries\n", o.out, o.kind,
                       (long long)o.S, (long long)o.n, (long long)o.d, (long long)shown.m);
            }
        }
        rc = err.code;
    } else if (!strcmp(cmd, "replay")) {
        kv_replay_opts o;
        kv_replay_defaults(&o);
        o.table = rank == 0 ? stdout : NULL;
        parse_replay(argc - 1, argv + 1, &o, &err);
        if (!kv_agree(comm, &err)) kv_replay_run(&o, comm, NULL, &err);
        rc = err.code;
    } else if (!strcmp(cmd, "sweep")) {
        kv_sweep_opts o;
        int64_t ns[64], ds[64];
        memset(&o, 0, sizeof o);
        kv_gen_defaults(&o.gen);
        o.gen.kind = "jl";
        o.gen.m = 64;
        o.eps = 0.1;
        o.ns = ns;
        o.ds = ds;
        o.table = rank == 0 ? stdout : NULL;
        parse_sweep(argc - 1, argv + 1, &o, ns, ds, &err);
        if (!kv_agree(comm, &err)) kv_sweep_run(&o, comm, &err);
        rc = err.code;
    } else if (!strcmp(cmd, "info")) {
        rc = cmd_info(argc - 1, argv + 1, comm, &err);
        if (rc && rank == 0) {
            fprintf(stderr, "kvstream: error: %s\n", err.msg);
            rc = err.code;
        }
        kv_mpi_finalize();
        return rc;
    } else if (!strcmp(cmd, "record")) {
        /* serial: rank 0 records, the others wait for its verdict */
        if (rank == 0) kv_cmd_record(argc - 1, argv + 1, &err);
        kv_agree(comm, &err);
        rc = err.code;
    } else if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        if (rank == 0) printf("kvstream %s\n", KVSTREAM_VERSION);
    } else if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        if (rank == 0) usage(stdout);
    } else {
        kv_seterr(&err, KV_EINPUT, "%s%s%s (commands: gen, info, replay, sweep, record, version)",
                  *cmd ? "unknown command '" : "no command given", cmd, *cmd ? "'" : "");
        rc = err.code;
    }
    if (rc == KV_ESTOPPED && rank == 0) fprintf(stderr, "kvstream: %s\n", err.msg);
    else if (rc && rank == 0) fprintf(stderr, "kvstream: error: %s\n", err.msg);
    kv_mpi_finalize();
    return rc;
}
