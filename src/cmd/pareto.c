/* pareto.c - `kvstream pareto`: error against memory for every (method,
 * budget, seed) instance of a method list, in one replay (docs/PARETO.md).
 *
 * Every instance becomes one spec of a single replay's --methods list,
 *     <method>:<its params>,budget=<b>,seed=<base+i>,name=<method>@<b>#<i>
 * ('.' of the budget written 'p' in the label), so the trace is read and
 * exact attention computed once.  The replay writes /methods/<label> to -o;
 * rank 0 then reads every instance's rel_error and bound_ratio back, sums
 * them up like the replay's own table (kv_summarize: nearest-rank
 * quantiles over all streams and queries) and appends the table /pareto. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cmd/cmd.h"
#include "cmd/stores.h"
#include "core/budget.h"
#include "core/spec.h"
#include "io/results.h"
#include "kernels/metrics.h"
#include "methods/method.h"
#include "mpi/agree.h"
#include "replay/replay.h"

enum { MAX_BUDGETS = 64, MAX_SEEDS = 1000, MAX_INSTANCES = 120 /* the results writer holds <= 256 datasets */ };

/* one row of /pareto */
typedef struct {
    char method[64];  /* the method's name= in --methods, else its name */
    char budget[64];  /* as given in --budgets; "none" for a method without budget= */
    int64_t seed;     /* seed= given to it; -1 for a deterministic method */
    char label[64];   /* its replay label: the group /methods/<label> */
    char spec[256];   /* the spec it ran as */
    int64_t memory;
    double read_bytes, read_tokens; /* per query (replay/cost.h) */
    double p50, p95, mean, max, bound95;
} row;

typedef struct {
    kv_replay_opts ro;
    const char *methods, *budgets, *stores;
    int seeds;
    int axis; /* 0: memory, 1: reads (what the table's x column is) */
} pareto_cli;

/* --budgets "10%,2.5%,8MiB": each entry checked with kv_budget_parse */
static int parse_budgets(const char *list, char b[][64], int *nb, kv_err *err)
{
    *nb = 0;
    const char *s = list;
    for (;;) {
        size_t len = strcspn(s, ",");
        if (*nb == MAX_BUDGETS) return kv_seterr(err, KV_EINPUT, "pareto: --budgets: more than %d entries", MAX_BUDGETS);
        if (len >= 64) return kv_seterr(err, KV_EINPUT, "pareto: --budgets: '%.*s' is too long", (int)len, s);
        memcpy(b[*nb], s, len);
        b[*nb][len] = '\0';
        kv_budget x;
        kv_err e = { 0, "" };
        if (kv_budget_parse(b[*nb], &x, &e)) return kv_seterr(err, KV_EINPUT, "pareto: --budgets: %s", e.msg);
        for (int i = 0; i < *nb; i++)
            if (!strcmp(b[i], b[*nb])) return kv_seterr(err, KV_EINPUT, "pareto: --budgets: '%s' given twice", b[i]);
        (*nb)++;
        if (!s[len]) return KV_OK;
        s += len + 1;
    }
}

/* sp's text without name=, then budget= and seed= when given (NULL / -1: not) and name= */
static int spec_text(const kv_spec *sp, const char *budget, int64_t seed, const char *label, char *out, size_t len)
{
    char extra[192];
    size_t o = 0;
    if (budget) o += (size_t)snprintf(extra + o, sizeof extra - o, "budget=%s,", budget);
    if (seed >= 0 && o < sizeof extra) o += (size_t)snprintf(extra + o, sizeof extra - o, "seed=%lld,", (long long)seed);
    if (o < sizeof extra) o += (size_t)snprintf(extra + o, sizeof extra - o, "name=%s", label);
    return o < sizeof extra ? kv_spec_format(sp, extra, out, len) : -1;
}

/* one row, its label and spec; an error when either does not fit */
static int add_row(row *rows, int *nr, const kv_spec *sp, const char *method, const char *budget, int64_t seed,
                   int k, kv_err *err)
{
    if (*nr == MAX_INSTANCES)
        return kv_seterr(err, KV_EINPUT, "pareto: more than %d instances (methods x budgets x seeds): split the run",
                         MAX_INSTANCES);
    row *x = &rows[(*nr)++];
    memset(x, 0, sizeof *x);
    snprintf(x->method, sizeof x->method, "%s", method);
    snprintf(x->budget, sizeof x->budget, "%s", budget ? budget : "none");
    x->seed = seed;
    int L = snprintf(x->label, sizeof x->label, "%s@%s#%d", method, x->budget, k);
    for (char *c = x->label; *c; c++)
        if (*c == '.') *c = 'p'; /* labels are HDF5 names: no '.' (core/spec.c) */
    if (L >= (int)sizeof x->label)
        return kv_seterr(err, KV_EINPUT, "pareto: label '%s@%s#%d' is too long (give a shorter name=)", method,
                         x->budget, k);
    if (spec_text(sp, budget, seed, x->label, x->spec, sizeof x->spec) || strlen(x->spec) + 1 >= sizeof x->spec)
        return kv_seterr(err, KV_EINPUT, "pareto: spec of %s is too long", x->label);
    return KV_OK;
}

/* The rows: exact first, then per method, budget and seed (in the order given). */
static int plan(const pareto_cli *w, row *rows, int *nr, kv_err *err)
{
    char budgets[MAX_BUDGETS][64];
    int nb = 0, ns = 0;
    kv_spec *sp = NULL;
    *nr = 0;
    if (parse_budgets(w->budgets, budgets, &nb, err) || kv_spec_parse_list(w->methods, &sp, &ns, err))
        return err->code;
    rows[(*nr)++] = (row){ .method = "exact", .budget = "none", .seed = -1, .label = "exact", .spec = "exact" };
    for (int i = 0; i < ns && !err->code; i++) {
        const kv_method_ops *ops = kv_method_find(sp[i].method);
        /* the row's method: name= if given, else the method's name */
        int named = kv_spec_has(&sp[i], "name");
        const char *m = named ? sp[i].label : sp[i].method;
        if (!ops) {
            kv_seterr(err, KV_EINPUT, "pareto: --methods: unknown method '%s' (methods: %s)", sp[i].method,
                      kv_method_names());
            break;
        }
        if (!strcmp(sp[i].method, "exact") && !named) continue; /* the reference: always the first row */
        for (int j = 0; j <= i; j++)
            if (!strcmp(m, j < i ? (kv_spec_has(&sp[j], "name") ? sp[j].label : sp[j].method) : "exact"))
                kv_seterr(err, KV_EINPUT, "pareto: --methods: two methods are called '%s' (give name=...)", m);
        const kv_param_def *bd = kv_method_param(ops, "budget");
        int has_budget = bd && bd->type == KV_PT_BUDGET, has_seed = kv_method_param(ops, "seed") != NULL;
        if ((has_budget && kv_spec_has(&sp[i], "budget")) || (has_seed && kv_spec_has(&sp[i], "seed"))) {
            kv_seterr(err, KV_EINPUT, "pareto: --methods: %s: budget= and seed= come from --budgets and --seeds",
                      sp[i].text);
            break;
        }
        for (int b = 0; b < (has_budget ? nb : 1) && !err->code; b++)
            for (int s = 0; s < (has_seed ? w->seeds : 1) && !err->code; s++)
                add_row(rows, nr, &sp[i], m, has_budget ? budgets[b] : NULL,
                        has_seed ? (int64_t)w->ro.seed + s : -1, s, err);
    }
    free(sp);
    return err->code;
}

/* "exact,spec,spec,...": the one replay's --methods (malloc'ed) */
static char *methods_list(const row *rows, int nr, kv_err *err)
{
    size_t len = 1;
    for (int i = 0; i < nr; i++) len += strlen(rows[i].spec) + 1;
    char *s = kv_malloc(len, err), *o = s;
    for (int i = 0; s && i < nr; i++) o += sprintf(o, "%s%s", i ? "," : "", rows[i].spec);
    return s;
}

/* the statistics of one instance from its group of the results file */
static int read_row(kv_results *r, row *x, int bound, kv_err *err)
{
    char g[96];
    snprintf(g, sizeof g, "/methods/%s", x->label);
    double *v = NULL;
    int64_t n = 0;
    if (kv_results_read_attr_i64(r, g, "memory_bytes", &x->memory, err) ||
        kv_results_read_attr_f64(r, g, "read_bytes_per_query", &x->read_bytes, err) ||
        kv_results_read_attr_f64(r, g, "read_tokens_per_query", &x->read_tokens, err) ||
        kv_results_read(r, g, "rel_error", KV_R_F64, (void **)&v, &n, err))
        return err->code;
    kv_summary e = kv_summarize(v, (size_t)n);
    free(v);
    x->p50 = e.p50;
    x->p95 = e.p95;
    x->mean = e.mean;
    x->max = e.max;
    x->bound95 = NAN; /* no V^T V with --no-bound-ratio */
    if (bound) {
        if (kv_results_read(r, g, "bound_ratio", KV_R_F64, (void **)&v, &n, err)) return err->code;
        x->bound95 = kv_summarize(v, (size_t)n).p95;
        free(v);
    }
    return KV_OK;
}

/* Rank 0: read the instances back and append /pareto to the results file. */
static int write_pareto(const pareto_cli *w, row *rows, int nr, kv_err *err)
{
    kv_results *r = kv_results_reopen(w->ro.out, err);
    if (!r) return err->code;
    const char **meth = kv_calloc((size_t)nr, sizeof *meth, err), **bud = kv_calloc((size_t)nr, sizeof *bud, err);
    const char **lab = kv_calloc((size_t)nr, sizeof *lab, err);
    int64_t *i64 = kv_calloc((size_t)nr * 2, sizeof *i64, err);
    double *f = kv_calloc((size_t)nr * 7, sizeof *f, err);
    for (int i = 0; !err->code && i < nr; i++) {
        if (read_row(r, &rows[i], w->ro.bound_ratio, err)) break;
        meth[i] = rows[i].method;
        bud[i] = rows[i].budget;
        lab[i] = rows[i].label;
        i64[i] = rows[i].seed;
        i64[nr + i] = rows[i].memory;
        double st[7] = { rows[i].p50, rows[i].p95, rows[i].mean, rows[i].max, rows[i].bound95, rows[i].read_bytes,
                         rows[i].read_tokens };
        for (int c = 0; c < 7; c++) f[c * nr + i] = st[c];
    }
    static const char *fcols[7] = { "p50_error", "p95_error", "mean_error", "max_error", "p95_bound_ratio",
                                    "read_bytes_per_query", "read_tokens_per_query" };
    const char *G = "/pareto";
    int64_t dims[1] = { nr };
    int bad = err->code;
    if (!bad)
        bad = kv_results_group(r, G, err) || kv_results_write_strings(r, G, "method", meth, nr, err) ||
            kv_results_write_strings(r, G, "budget", bud, nr, err) ||
            kv_results_write_strings(r, G, "label", lab, nr, err) ||
            kv_results_write_all(r, G, "seed", KV_R_I64, 1, dims, i64, err) ||
            kv_results_write_all(r, G, "memory_bytes", KV_R_I64, 1, dims, i64 + nr, err) ||
            kv_results_attr_str(r, G, "methods", w->methods, err) ||
            kv_results_attr_str(r, G, "budgets", w->budgets, err) ||
            kv_results_attr_i64(r, G, "seeds", w->seeds, err) ||
            kv_results_attr_str(r, G, "axis", w->axis ? "reads" : "memory", err) ||
            kv_results_attr_i64(r, G, "base_seed", (int64_t)w->ro.seed, err);
    for (int c = 0; c < 7 && !bad; c++) bad = kv_results_write_all(r, G, fcols[c], KV_R_F64, 1, dims, f + c * nr, err);
    free(meth);
    free(bud);
    free(lab);
    free(i64);
    free(f);
    int rc = err->code;
    kv_results_close(r, err);
    return rc ? rc : err->code;
}

/* axis 1: reads per query (tokens a query touches, then the bytes its
 * call read, a batch's shared read split over its queries) instead of memory */
static void print_table(const row *rows, int nr, int axis, FILE *f)
{
    fprintf(f, "%-20s %-10s %6s %14s %12s %10s %10s %10s %10s %10s\n", "method", "budget", "seed",
            axis ? "read tok/q" : "memory_bytes", axis ? "read B/q" : "", "p50 err", "p95 err", "mean err",
            "max err", "p95 bound");
    for (int i = 0; i < nr; i++) {
        const row *x = &rows[i];
        char tok[32] = "";
        if (axis) snprintf(tok, sizeof tok, "%.6g", x->read_bytes);
        fprintf(f, "%-20.20s %-10.10s %6lld %14.6g %12s %10.3g %10.3g %10.3g %10.3g %10.3g\n", x->method, x->budget,
                (long long)x->seed, axis ? x->read_tokens : (double)x->memory, tok, x->p50, x->p95, x->mean, x->max,
                x->bound95);
    }
}

#define P(member) KV_AT(pareto_cli, member)

static const kv_opt pareto_table[] = {
    { "methods", 0, KV_OPT_STRING, P(methods), .meta = "LIST", .def = "required",
      .help = "method specs without budget= and seed= (`kvstream methods`); exact is always the first row" },
    { "budgets", 0, KV_OPT_STRING, P(budgets), .meta = "B,B,...", .def = "required",
      .help = "budgets for every method taking budget= (10%, 2.5%, 8MiB, 500KB, 65536, 4096tok)" },
    { "stores", 0, KV_OPT_STRING, P(stores), .meta = "S,S,...", .def = "none",
      .help = "draw every method taking store= (h2o, tova, snapkv, window, sinks) once per store: f32,kivi4,tq3 (ALGORITHMS.md 4f)" },
    { "seeds", 0, KV_OPT_INT, P(seeds), .lo = 1, .hi = MAX_SEEDS, .meta = "K",
      .help = "seeds --seed, --seed+1, ... for every method taking seed=" },
    { "output", 'o', KV_OPT_STRING, P(ro.out), .meta = "FILE", .def = "required",
      .help = "results file: the replay's groups plus the table /pareto (docs/PARETO.md)" },
    { "axis", 0, KV_OPT_CHOICE, P(axis), .choices = "memory|reads",
      .help = "the table's x column: memory_bytes, or the tokens (and bytes) a query reads; /pareto has both" },
    { 0 } };

static const kv_opt replay_table[] = {
    { "seed", 0, KV_OPT_INT, P(ro.seed), .lo = 0, .hi = INT64_MAX - MAX_SEEDS, .meta = "X",
      .help = "the first seed (and the replay's --seed)" },
    { "batch", 0, KV_OPT_INT, P(ro.batch), .lo = 1, .hi = 1 << 20, .meta = "B",
      .help = "queries merged on rank 0 per MPI reduction" },
    { "semantics", 0, KV_OPT_CHOICE, P(ro.semantics), .choices = "full|window-unmasked-values",
      .help = "attention semantics (ALGORITHMS.md section 3)" },
    { "window", 0, KV_OPT_INT, P(ro.window), .lo = 1, .hi = INT64_C(1) << 40, .meta = "W", .def = "none",
      .help = "W for --semantics window-unmasked-values" },
    { "shard-chunk", 0, KV_OPT_INT, P(ro.shard_chunk), .lo = 1, .hi = INT64_C(1) << 30, .meta = "C",
      .def = "the file's chunk", .help = "tokens per chunk-cyclic shard unit" },
    { "no-bound-ratio", 0, KV_OPT_FLAG, P(ro.bound_ratio), .lo = 0,
      .help = "skip the V^T V accumulation (p95_bound_ratio is then NaN)" },
    { "max-memory", 0, KV_OPT_SIZE, P(ro.max_memory), .meta = "SIZE", .def = "no limit",
      .help = "refuse a run whose per-rank bound exceeds SIZE (e.g. 512M, 4G)" },
    { "quiet", 'q', KV_OPT_FLAG, P(ro.quiet), .lo = 1, .help = "no progress line on stderr" },
    { "floors", 0, KV_OPT_STRING, P(ro.floors), .meta = "FILE", .def = "measured once per run",
      .help = "the replay's --floors (its results' time_over_floor)" },
    { 0 } };

int kv_run_pareto(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, help, nr = 0;
    MPI_Comm_rank(comm, &rank);
    pareto_cli w = { .seeds = 1 };
    kv_replay_defaults(&w.ro);
    kv_cmdline c = {
        .cmd = "pareto",
        .usage = "TRACE --methods LIST --budgets LIST [--seeds K] [--seed X] -o FILE [options]",
        .about = "Error against memory: every (method, budget, seed) of the lists in ONE replay (exact computed\n"
                 "once); -o gets the replay's groups and the table /pareto, one row per instance (docs/PARETO.md).\n"
                 "Methods without budget= (exact, topk) get budget \"none\"; without seed= (window, sinks, h2o)\n"
                 "seed -1.  Plot: analysis/pareto.py FILE -o PREFIX.",
        .operand = "trace file",
        .groups = { { "pareto", pareto_table, &w }, { "replay", replay_table, &w } },
    };
    row *rows = kv_calloc(MAX_INSTANCES, sizeof *rows, err);
    char *expanded = NULL;
    if (rows && !kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, &w.ro.trace, &help, err) && !help &&
        w.stores && w.methods && (expanded = kv_expand_stores(w.methods, w.stores, err)))
        w.methods = expanded;
    if (rows && !err->code && !help) {
        if (!w.ro.out) kv_seterr(err, KV_EINPUT, "pareto: missing -o FILE");
        else if (!w.methods) kv_seterr(err, KV_EINPUT, "pareto: missing --methods LIST");
        else if (!w.budgets) kv_seterr(err, KV_EINPUT, "pareto: missing --budgets LIST (e.g. 5%%,10%%,25%%)");
        else if (w.ro.window && w.ro.semantics != KV_SEM_WINDOW_UNMASKED)
            kv_seterr(err, KV_EINPUT, "pareto: --window only applies with --semantics window-unmasked-values");
        else plan(&w, rows, &nr, err);
    }
    if (kv_agree(comm, err) || help) {
        free(rows);
        free(expanded);
        return err->code;
    }
    char *list = methods_list(rows, nr, err);
    if (!kv_agree(comm, err)) {
        w.ro.methods = list;
        w.ro.table = NULL; /* our table instead of the replay's */
        kv_cmd_check_placement("pareto", comm);
        if (!kv_replay_run(&w.ro, comm, NULL, err)) { /* its errors are agreed already */
            if (rank == 0 && !write_pareto(&w, rows, nr, err)) print_table(rows, nr, w.axis, stdout);
            kv_agree(comm, err);
        }
    }
    free(list);
    free(rows);
    free(expanded);
    return err->code;
}
