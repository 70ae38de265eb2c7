/* cmd_pareto.c - `kvstream pareto`: error against memory for every (method,
 * budget, seed) instance of a method list, in one replay (docs/PARETO.md):
 * the command line and the instances; the run and /pareto: study/pareto.h.
 *
 * Every instance becomes one spec of a single replay's --methods list,
 *     <method>:<its params>,budget=<b>,seed=<base+i>,name=<method>@<b>#<i>
 * ('.' of the budget written 'p' in the label), so the trace is read and
 * exact attention computed once (study/study.h).  The replay writes
 * /methods/<label> to -o and hands back every instance's figures (nearest-rank
 * quantiles over all streams and queries, as its own table); rank 0 adds the
 * table /pareto (study/table.h) to the same file before the replay closes it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cmd/cmd.h"
#include "cmd/cmd_stores.h"
#include "core/budget.h"
#include "core/spec.h"
#include "methods/method.h"
#include "mpi/agree.h"
#include "replay/replay.h"
#include "study/pareto.h"

enum { MAX_BUDGETS = 64, MAX_SEEDS = 1000, MAX_INSTANCES = 120 /* the results writer holds <= 256 datasets */ };

typedef kv_pareto_row row; /* one row of /pareto (study/pareto.h) */

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

#define P(member) KV_AT(pareto_cli, member)

static const kv_opt pareto_table[] = {
    { "methods", 0, KV_OPT_STRING, P(methods), .meta = "LIST", .def = "required",
      .help = "method specs without budget= and seed= (`kvstream methods`); exact is always the first row" },
    { "budgets", 0, KV_OPT_STRING, P(budgets), .meta = "B,B,...", .def = "required",
      .help = "budgets for every method taking budget= (10%, 2.5%, 8MiB, 500KB, 65536, 4096tok)" },
    { "stores", 0, KV_OPT_STRING, P(stores), .meta = "S,S,...", .def = "none",
      .help = "draw every method taking store= (h2o, tova, snapkv, window, sinks) once per store: f32,kivi4,tq3 (ALGORITHMS.md 4h)" },
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
      .help = "refuse a run whose per-rank bound exceeds SIZE (512M = 512MiB, 4G = 4GiB; 4GB = 4e9 bytes)" },
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
    kv_pareto p = { w.methods, w.budgets, w.seeds, w.axis, rows, nr };
    w.ro.table = NULL; /* our table instead of the replay's */
    kv_cmd_check_placement("pareto", comm);
    kv_pareto_run(&p, &w.ro, comm, rank == 0 ? stdout : NULL, err);
    free(rows);
    free(expanded);
    return err->code;
}
