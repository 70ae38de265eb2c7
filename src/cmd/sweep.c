/* sweep.c - `kvstream sweep`: minimum budget for p95 error <= eps over a grid of (n, d)
 * (the search and the /sweep table, then the command line at the end).  Each
 * row also says whether the answer is "keep everything" (the method held at
 * least what exact attention holds) and what the generator picked (beta, N). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mpi/agree.h"
#include "replay/replay.h"
#include "io/results.h"
#include "core/spec.h"
#include "cmd/cmd.h"
#include "cmd/sweep.h"
#include "methods/method.h"
#include "mpi/coll.h"
#include "io/trace.h"
#include "kernels/metrics.h"

typedef struct {
    char method[64];     /* the template's label */
    int64_t n, d, param, budget;
    double p95;
    int met;
    int64_t exact_bytes; /* exact attention's memory on the same trace */
    int keeps_all;       /* met, but only with budget >= exact_bytes */
    double beta;         /* the generator's pick (index, packing), else -1 */
    int64_t points;      /* packing's N, else -1 */
    int64_t errors;      /* parameters the method refused (too small a budget=): counted as misses */
    double reads;        /* --axis reads: tokens a query read at param (NaN otherwise) */
} row;

/* spec text with every '@' replaced by x */
static void instantiate(const char *tmpl, int64_t x, char *out, size_t len)
{
    size_t o = 0;
    for (const char *c = tmpl; *c && o + 24 < len; c++) {
        if (*c == '@') o += (size_t)snprintf(out + o, len - o, "%lld", (long long)x);
        else out[o++] = *c;
    }
    out[o] = '\0';
}

static int cmp_f64(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* --score bits, on one rank: per probe the fraction of its target's value
 * bits that the sign of the method's output gets wrong (0 counts as wrong),
 * p[i] = the p95 over probes (nearest rank, as replay's) for the first K
 * methods of res, whose outputs the replay saved in res_path. */
static int bit_scores(const char *trace, const char *res_path, const kv_replay_result *res, int K, double *p,
                      kv_err *err)
{
    kv_trace *t = kv_trace_open(trace, MPI_COMM_SELF, err);
    if (!t) return err->code;
    const kv_trace_info *in = kv_trace_get_info(t);
    int64_t S = in->S, m = in->m, dv = in->dv, d = in->d;
    if (!in->has_query_target) {
        kv_trace_close(t);
        return kv_seterr(err, KV_EINPUT, "sweep: --score bits needs /query_target in the trace (kinds jl, index, packing)");
    }
    int64_t *tgt = malloc(sizeof(int64_t) * (size_t)(S * m));
    float *Vt = malloc(sizeof(float) * (size_t)(S * m * dv));
    float *Kb = malloc(sizeof(float) * (size_t)(S * d)), *Vb = malloc(sizeof(float) * (size_t)(S * dv));
    double *e = malloc(sizeof(double) * (size_t)(S * m));
    int rc = !tgt || !Vt || !Kb || !Vb || !e ? kv_seterr(err, KV_EINTERNAL, "sweep: out of memory") : KV_OK;
    if (!rc) rc = kv_trace_read_query_target(t, 0, m, tgt, err);
    /* the target's value row, one token (of every stream) at a time */
    for (int64_t s = 0; !rc && s < S; s++)
        for (int64_t j = 0; !rc && j < m; j++) {
            rc = kv_trace_read_kv(t, tgt[s * m + j], 1, Kb, Vb, err);
            if (!rc) memcpy(Vt + (s * m + j) * dv, Vb + s * dv, sizeof(float) * (size_t)dv);
        }
    kv_trace_close(t);
    kv_results *r = rc ? NULL : kv_results_reopen(res_path, err);
    if (!rc && !r) rc = err->code;
    for (int i = 0; !rc && i < K; i++) {
        char g[96];
        float *z = NULL;
        int64_t cnt = 0;
        snprintf(g, sizeof g, "/methods/%s", res->methods[i].label);
        if (kv_results_read(r, g, "outputs", KV_R_F32, (void **)&z, &cnt, err)) { rc = err->code; break; }
        if (cnt != S * m * dv) rc = kv_seterr(err, KV_EINTERNAL, "sweep: %s/outputs has %lld values", g, (long long)cnt);
        for (int64_t q = 0; !rc && q < S * m; q++) {
            int64_t wrong = 0;
            for (int64_t c = 0; c < dv; c++) {
                float zz = z[q * dv + c], v = Vt[q * dv + c];
                wrong += !((zz > 0 && v > 0) || (zz < 0 && v < 0));
            }
            e[q] = (double)wrong / (double)dv;
        }
        if (!rc) p[i] = kv_summarize(e, (size_t)(S * m)).p95;
        free(z);
    }
    if (r && kv_results_close(r, err) && !rc) rc = err->code;
    free(tgt); free(Vt); free(Kb); free(Vb); free(e);
    if (rc == KV_EINPUT) { /* the replay accepted the spec: no failure here is the user's (nor a refused budget) */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        kv_err_clear(err);
        rc = kv_seterr(err, KV_EINTERNAL, "sweep --score bits: %s", msg);
    }
    return rc;
}

/* --axis reads: the largest over the first K methods of res of the mean
 * tokens a query read (the replay's read_tokens_per_query, written to the
 * scratch results at path), on every rank. */
static int read_counts(const char *path, const kv_replay_result *res, int K, double *reads, MPI_Comm comm, kv_err *err)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    double x = -INFINITY;
    if (rank == 0) {
        kv_results *r = kv_results_reopen(path, err);
        for (int i = 0; r && i < K && !err->code; i++) {
            char g[96];
            double v;
            snprintf(g, sizeof g, "/methods/%s", res->methods[i].label);
            if (kv_results_read_attr_f64(r, g, "read_tokens_per_query", &v, err)) {
                kv_err_clear(err);
                kv_seterr(err, KV_EINPUT, "sweep --axis reads: the replay wrote no read_tokens_per_query for %s "
                          "(this build does not count what queries read)", res->methods[i].label);
            } else if (v > x) x = v;
        }
        if (r) {
            kv_err e2 = { 0 };
            kv_results_close(r, &e2);
        }
    }
    if (kv_agree(comm, err)) return err->code;
    if (kv_mpi_bcast(&x, sizeof x, 0, comm)) return kv_seterr(err, KV_EINTERNAL, "sweep: broadcast of the reads failed");
    *reads = x;
    return KV_OK;
}

/* one replay of one spec; *p95 and *mem of that method.  A randomised
 * method (one with seed=) runs as --seeds instances with seeds --seed ..
 * --seed + K - 1 in that replay: *p95 is their median (the upper one for
 * even K: a budget must meet eps for most seeds, not one lucky draw), *mem
 * the largest; *reads (--axis reads, else NaN) the largest mean reads per
 * query. */
static int run_one(const kv_sweep_opts *o, const char *trace, const char *spec, MPI_Comm comm, double *p95,
                   int64_t *mem, double *reads, kv_err *err)
{
    kv_spec *sp = NULL;
    int ns = 0, K = o->seeds > 1 ? o->seeds : 1;
    if (kv_spec_parse_list(spec, &sp, &ns, err)) return err->code;
    if (!kv_method_param(kv_method_find(sp[0].method), "seed") || kv_spec_has(&sp[0], "seed")) K = 1;
    size_t cap = K == 1 ? strlen(spec) + 1 : (size_t)K * 600;
    char *list = malloc(cap);
    double *p = malloc(sizeof(double) * (size_t)K);
    if (!list || !p) {
        free(sp); free(list); free(p);
        return kv_seterr(err, KV_EINTERNAL, "sweep: out of memory");
    }
    size_t at = 0;
    for (int i = 0; i < K; i++) {
        char extra[96], one[600];
        snprintf(extra, sizeof extra, "seed=%llu,name=sweep%d", (unsigned long long)(o->gen.seed + (uint64_t)i), i);
        if (K == 1) { /* the spec as given, whatever its length */
            memcpy(list, spec, cap);
            break;
        }
        if (kv_spec_format(&sp[0], extra, one, sizeof one)) {
            free(sp); free(list); free(p);
            return kv_seterr(err, KV_EINPUT, "sweep: spec '%s' is too long", spec);
        }
        at += (size_t)snprintf(list + at, cap - at, "%s%s", i ? "," : "", one);
    }
    free(sp);
    kv_replay_opts ro;
    kv_replay_defaults(&ro);
    ro.trace = trace;
    ro.methods = list;
    ro.quiet = 1;
    ro.bound_ratio = 0;
    ro.seed = o->gen.seed;
    char scratch[1100];
    if (o->score_bits || o->axis_reads) { /* a scratch results file: outputs scored, reads read below */
        snprintf(scratch, sizeof scratch, "%s/sweep-score.h5", o->workdir ? o->workdir : ".");
        ro.out = scratch;
        ro.save_outputs = o->score_bits;
    }
    kv_replay_result res = { 0 };
    int rc = kv_replay_run(&ro, comm, &res, err);
    if (!rc) {
        *mem = 0;
        for (int i = 0; i < K; i++) {
            p[i] = res.methods[i].p95_error;
            if (res.methods[i].memory_bytes > *mem) *mem = res.methods[i].memory_bytes;
        }
    }
    *reads = NAN;
    if (!rc && o->axis_reads && (rc = read_counts(scratch, &res, K, reads, comm, err))) kv_replay_result_free(&res);
    if (!rc && o->score_bits) { /* rank 0 scores, every rank gets the numbers */
        int rank;
        MPI_Comm_rank(comm, &rank);
        if (rank == 0) bit_scores(trace, scratch, &res, K, p, err);
        rc = kv_agree(comm, err);
        if (!rc && kv_mpi_bcast(p, sizeof(double) * (size_t)K, 0, comm))
            rc = kv_seterr(err, KV_EINTERNAL, "sweep: broadcast of the bit scores failed");
        if (rc) kv_replay_result_free(&res);
    }
    if (!rc) {
        qsort(p, (size_t)K, sizeof *p, cmp_f64);
        *p95 = p[K / 2];
        kv_replay_result_free(&res);
    }
    free(list);
    free(p);
    return rc;
}

static int search(const kv_sweep_opts *o, const char *trace, const kv_spec *t, int64_t n, MPI_Comm comm, row *out,
                  kv_err *err)
{
    char spec[512];
    double p95 = NAN;
    int64_t mem = -1;
    double rd = NAN, hi_rd = NAN, last_rd = NAN;
    if (!strchr(t->text, '@')) { /* nothing to search: one run */
        if (run_one(o, trace, t->text, comm, &p95, &mem, &rd, err)) return err->code;
        *out = (row){ .param = 0, .budget = mem, .p95 = p95, .met = p95 <= o->eps, .reads = rd };
        return KV_OK;
    }
    int64_t lo = 0, hi = -1, x = 1, refused = 0;
    double hi_p95 = NAN, last_p95 = NAN;
    int64_t hi_mem = -1, last_mem = -1;
    for (;;) { /* doubling */
        instantiate(t->text, x, spec, sizeof spec);
        if (run_one(o, trace, spec, comm, &p95, &mem, &rd, err)) {
            /* a method may refuse a small parameter (budget= below what one
             * cluster needs): a miss, unless even x = n is refused */
            if (err->code != KV_EINPUT || x >= n) return err->code;
            kv_err_clear(err);
            refused++;
            p95 = INFINITY;
            mem = -1;
            rd = NAN;
        }
        last_p95 = p95;
        last_mem = mem;
        last_rd = rd;
        if (p95 <= o->eps) { hi = x; hi_p95 = p95; hi_mem = mem; hi_rd = rd; break; }
        lo = x;
        if (x >= n) break;
        x = x * 2 > n ? n : x * 2;
    }
    if (hi < 0) { /* even a budget of n tokens misses eps */
        *out = (row){ .param = x, .budget = last_mem, .p95 = last_p95, .met = 0, .errors = refused, .reads = last_rd };
        return KV_OK;
    }
    while (hi - lo > 1 && hi - lo > lo / 8) { /* bisection to 1/8 */
        x = lo + (hi - lo) / 2;
        instantiate(t->text, x, spec, sizeof spec);
        if (run_one(o, trace, spec, comm, &p95, &mem, &rd, err)) {
            if (err->code != KV_EINPUT) return err->code;
            kv_err_clear(err);
            refused++;
            lo = x;
            continue;
        }
        if (p95 <= o->eps) { hi = x; hi_p95 = p95; hi_mem = mem; hi_rd = rd; }
        else lo = x;
    }
    *out = (row){ .param = hi, .budget = hi_mem, .p95 = hi_p95, .met = 1, .errors = refused, .reads = hi_rd };
    return KV_OK;
}

static int write_table(const kv_sweep_opts *o, const row *rows, int nr, kv_err *err)
{
    kv_results *r = kv_results_create(o->out, err);
    if (!r) return err->code;
    int64_t *n = malloc(sizeof(int64_t) * (size_t)nr), *d = malloc(sizeof(int64_t) * (size_t)nr);
    int64_t *pa = malloc(sizeof(int64_t) * (size_t)nr), *b = malloc(sizeof(int64_t) * (size_t)nr);
    int64_t *met = malloc(sizeof(int64_t) * (size_t)nr), *eb = malloc(sizeof(int64_t) * (size_t)nr);
    int64_t *ka = malloc(sizeof(int64_t) * (size_t)nr), *pts = malloc(sizeof(int64_t) * (size_t)nr);
    int64_t *ne = malloc(sizeof(int64_t) * (size_t)nr);
    double *p = malloc(sizeof(double) * (size_t)nr), *beta = malloc(sizeof(double) * (size_t)nr);
    double *rd = malloc(sizeof(double) * (size_t)nr);
    const char **names = malloc(sizeof(char *) * (size_t)nr), **kinds = malloc(sizeof(char *) * (size_t)nr);
    int rc = KV_OK;
    if (!n || !d || !pa || !b || !met || !p || !names || !kinds || !eb || !ka || !pts || !ne || !beta || !rd)
        rc = kv_seterr(err, KV_EINTERNAL, "out of memory");
    for (int i = 0; !rc && i < nr; i++) {
        n[i] = rows[i].n; d[i] = rows[i].d; pa[i] = rows[i].param; b[i] = rows[i].budget;
        p[i] = rows[i].p95; met[i] = rows[i].met; names[i] = rows[i].method; kinds[i] = o->gen.kind;
        eb[i] = rows[i].exact_bytes; ka[i] = rows[i].keeps_all; pts[i] = rows[i].points; beta[i] = rows[i].beta;
        ne[i] = rows[i].errors;
        rd[i] = rows[i].reads;
    }
    int64_t dims[1] = { nr };
    if (!rc) rc = kv_results_group(r, "/sweep", err);
    if (!rc) rc = kv_results_write_strings(r, "/sweep", "kind", kinds, nr, err);
    if (!rc) rc = kv_results_write_strings(r, "/sweep", "method", names, nr, err);
    if (!rc && nr > 0) {
        rc = kv_results_write_all(r, "/sweep", "n", KV_R_I64, 1, dims, n, err) ||
             kv_results_write_all(r, "/sweep", "d", KV_R_I64, 1, dims, d, err) ||
             kv_results_write_all(r, "/sweep", "param", KV_R_I64, 1, dims, pa, err) ||
             kv_results_write_all(r, "/sweep", "budget_bytes", KV_R_I64, 1, dims, b, err) ||
             kv_results_write_all(r, "/sweep", "p95_error", KV_R_F64, 1, dims, p, err) ||
             kv_results_write_all(r, "/sweep", "met", KV_R_I64, 1, dims, met, err) ||
             kv_results_write_all(r, "/sweep", "exact_bytes", KV_R_I64, 1, dims, eb, err) ||
             kv_results_write_all(r, "/sweep", "keeps_all", KV_R_I64, 1, dims, ka, err) ||
             kv_results_write_all(r, "/sweep", "beta", KV_R_F64, 1, dims, beta, err) ||
             kv_results_write_all(r, "/sweep", "points", KV_R_I64, 1, dims, pts, err) ||
             kv_results_write_all(r, "/sweep", "refused", KV_R_I64, 1, dims, ne, err) ||
             kv_results_write_all(r, "/sweep", "read_tokens", KV_R_F64, 1, dims, rd, err);
        if (rc) rc = err->code;
    }
    if (!rc) rc = kv_results_attr_f64(r, "/", "eps", o->eps, err) || kv_results_attr_str(r, "/", "kind", o->gen.kind, err) ||
                  kv_results_attr_str(r, "/", "methods", o->methods, err) ||
                  kv_results_attr_str(r, "/", "format", "kvstream-sweep", err) ||
                  kv_results_attr_i64(r, "/", "queries", o->gen.m, err) ||
                  kv_results_attr_str(r, "/", "query_at", kv_gen_query_at_name(&o->gen), err) ||
                  kv_results_attr_str(r, "/", "score", o->score_bits ? "bit_error" : "rel_error", err) ||
                  kv_results_attr_str(r, "/", "axis", o->axis_reads ? "reads" : "memory", err) ||
                  kv_results_attr_i64(r, "/", "seed", (int64_t)(o->gen.seed & INT64_MAX), err);
    if (rc) rc = err->code;
    free(n); free(d); free(pa); free(b); free(met); free(p); free(names); free(kinds);
    free(eb); free(ka); free(pts); free(ne); free(beta); free(rd);
    int rc2 = kv_results_close(r, err);
    return rc ? rc : rc2;
}

int kv_sweep_run(const kv_sweep_opts *o, MPI_Comm comm, kv_err *err)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    kv_spec *tm = NULL;
    int nt = 0;
    if (!o->out) kv_seterr(err, KV_EINPUT, "sweep: missing -o FILE");
    else if (!o->methods) kv_seterr(err, KV_EINPUT, "sweep: missing --methods (templates with '@', e.g. window:W=@)");
    else if (!(o->eps > 0)) kv_seterr(err, KV_EINPUT, "sweep: --eps must be > 0");
    else if (o->nn < 1 || o->nd < 1) kv_seterr(err, KV_EINPUT, "sweep: --n and --d need at least one value each");
    else if (o->score_bits && strcmp(o->gen.kind, "jl") && strcmp(o->gen.kind, "index") && strcmp(o->gen.kind, "packing") &&
             strcmp(o->gen.kind, "needle"))
        kv_seterr(err, KV_EINPUT, "sweep: --score bits needs value bits and targets: --kind jl, index, packing or needle, not '%s'",
                  o->gen.kind);
    else kv_spec_parse_list(o->methods, &tm, &nt, err);
    if (kv_agree(comm, err)) return err->code;
    row *rows = calloc((size_t)(o->nn * o->nd * nt), sizeof *rows);
    int nr = 0;
    if (!rows) kv_seterr(err, KV_EINTERNAL, "out of memory");
    if (rank == 0 && o->table)
        fprintf(o->table, "%-10s %8s %5s %-32s %10s %14s %10s %4s %9s%s\n", "kind", "n", "d", "method", "param",
                "budget_bytes", "p95_err", "met", "keeps_all", o->axis_reads ? "  reads/query" : "");
    for (int a = 0; a < o->nn && !err->code; a++)
        for (int b = 0; b < o->nd && !err->code; b++) {
            kv_gen_opts g = o->gen;
            char trace[1024];
            snprintf(trace, sizeof trace, "%s/sweep-%s-n%lld-d%lld-seed%llu.h5", o->workdir ? o->workdir : ".", g.kind,
                     (long long)o->ns[a], (long long)o->ds[b], (unsigned long long)g.seed);
            g.n = o->ns[a];
            g.d = o->ds[b];
            g.dv = -1;
            g.out = trace;
            kv_gen_picked pk;
            if (kv_gen_run_picked(&g, comm, &pk, err)) break;
            double ex_p95, ex_rd;
            int64_t ex_mem;
            /* what "everything" costs; with --axis reads it also finds out
             * whether this build counts reads, before any search */
            if (run_one(o, trace, "exact", comm, &ex_p95, &ex_mem, &ex_rd, err)) break;
            for (int i = 0; i < nt && !err->code; i++) {
                row *x = &rows[nr];
                if (search(o, trace, &tm[i], g.n, comm, x, err)) break;
                snprintf(x->method, sizeof x->method, "%s", tm[i].label);
                x->n = g.n;
                x->d = g.d;
                x->exact_bytes = ex_mem;
                x->keeps_all = x->met && x->budget >= ex_mem;
                x->beta = pk.beta;
                x->points = pk.points;
                if (rank == 0 && o->table) {
                    fprintf(o->table, "%-10s %8lld %5lld %-32.32s %10lld %14lld %10.4g %4s %9s", g.kind, (long long)x->n,
                            (long long)x->d, x->method, (long long)x->param, (long long)x->budget, x->p95,
                            x->met ? "yes" : "no", x->keeps_all ? "yes" : "");
                    if (o->axis_reads) fprintf(o->table, "  %11.1f", x->reads);
                    fputc('\n', o->table);
                    fflush(o->table);
                }
                nr++;
            }
            kv_mpi_barrier(comm);
            if (rank == 0 && !o->keep_traces) remove(trace);
        }
    if (rank == 0 && (o->score_bits || o->axis_reads)) { /* the scratch results */
        char scratch[1100];
        snprintf(scratch, sizeof scratch, "%s/sweep-score.h5", o->workdir ? o->workdir : ".");
        remove(scratch);
    }
    if (!err->code && rank == 0) write_table(o, rows, nr, err);
    kv_agree(comm, err);
    free(rows);
    free(tm);
    return err->code;
}

/* the command line: kv_sweep_opts plus room for the two grids */
typedef struct {
    kv_sweep_opts o;
    kv_opt_list n, d;
} sweep_cli;

#define W(member) KV_AT(sweep_cli, member)

static const kv_opt sweep_table[] = {
    { "output", 'o', KV_OPT_STRING, W(o.out), .meta = "FILE", .def = "required", .help = "the /sweep table to write" },
    { "n", 0, KV_OPT_INTLIST, W(n), .lo = 1, .hi = INT64_C(1) << 32, .meta = "N,N,...", .def = "required",
      .help = "grid of token counts" },
    { "d", 0, KV_OPT_INTLIST, W(d), .lo = 1, .hi = INT64_C(1) << 32, .meta = "D,D,...", .def = "required",
      .help = "grid of dimensions" },
    { "methods", 0, KV_OPT_STRING, W(o.methods), .meta = "LIST", .def = "required",
      .help = "method templates, '@' where the searched parameter goes (window:W=@)" },
    { "eps", 0, KV_OPT_DOUBLE, W(o.eps), .meta = "E", .help = "target p95 relative error (> 0)" },
    { "workdir", 0, KV_OPT_STRING, W(o.workdir), .meta = "DIR", .def = ".", .help = "where the generated traces go" },
    { "keep-traces", 0, KV_OPT_FLAG, W(o.keep_traces), .lo = 1, .help = "do not delete the generated traces" },
    { "score", 0, KV_OPT_CHOICE, W(o.score_bits), .choices = "rel|bits",
      .help = "rel: p95 relative error of the output; bits: p95 over probes of the fraction of the target's value "
              "bits the output's sign gets wrong (jl, index, packing)" },
    { "axis", 0, KV_OPT_CHOICE, W(o.axis_reads), .choices = "memory|reads",
      .help = "reads: also record, at each answer, the mean tokens a query read (read_tokens: keys and values "
              "read plus the metadata scanned, in tokens' worth of bytes; summed over ranks)" },
    { "seeds", 0, KV_OPT_INT, W(o.seeds), .lo = 1, .hi = 64, .meta = "K", .def = "1",
      .help = "randomised methods: K seeds per budget, judged by the median p95" },
    { 0 } };

int kv_run_sweep(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank, help;
    MPI_Comm_rank(comm, &rank);
    sweep_cli w;
    memset(&w, 0, sizeof w);
    kv_gen_defaults(&w.o.gen);
    w.o.gen.kind = "jl";
    w.o.gen.m = 64;
    w.o.eps = 0.1;
    kv_cmdline c = {
        .cmd = "sweep",
        .usage = "--n 512,1024 --d 16,48 --methods 'window:W=@,subgen:delta=1,t=@,s=@' --eps E -o FILE [options]",
        .about = "For every (n, d) and method template, the smallest budget whose p95 relative error is <= eps\n"
                 "(doubling from 1 to n, then bisection to 1/8); generates one trace per (n, d) of the grid.\n"
                 "With --query-at end (the default for index and packing) only probes after the stream are scored.\n"
                 "Templates may search a budget: subgen:delta=0.1,t=1,joint=1,budget=@tok.",
        .groups = { { "sweep", sweep_table, &w }, { "generator", kv_gen_opt_table, &w.o.gen } },
    };
    kv_opts_parse(&c, argc, argv, rank == 0 ? stdout : NULL, NULL, &help, err);
    if (kv_agree(comm, err) || help) return err->code;
    w.o.ns = w.n.v;
    w.o.nn = w.n.n;
    w.o.ds = w.d.v;
    w.o.nd = w.d.n;
    w.o.table = rank == 0 ? stdout : NULL;
    kv_cmd_check_placement("sweep", comm);
    return kv_sweep_run(&w.o, comm, err);
}
