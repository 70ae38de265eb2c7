/* sweep.c - the barrier sweep (see sweep.h): minimum budget for p95 error
 * <= eps over a grid of (n, d), the search and the /sweep table.  Each row
 * also says whether the answer is "keep everything" (the method held at
 * least what exact attention holds) and what the generator picked (beta, N). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mpi/agree.h"
#include "replay/replay.h"
#include "io/results.h"
#include "core/spec.h"
#include "study/sweep.h"
#include "methods/method.h"
#include "mpi/coll.h"
#include "io/trace.h"
#include "kernels/metrics.h"
#include "study/study.h"
#include "study/table.h"

typedef struct {
    char kind[32];       /* the generator's --kind */
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

/* --score bits, on rank 0: per probe the fraction of its target's value
 * bits that the sign of the method's output gets wrong (0 counts as wrong),
 * scored as the replay hands the outputs over (its on_outputs). */
typedef struct {
    int64_t S, m, dv;
    int K;        /* instances scored: the first K of the replay */
    float *Vt;    /* [S m][dv]: the value row of each probe's target */
    double *e;    /* [K][S m]: the scores */
} bit_score;

static void bits_free(bit_score *bs)
{
    free(bs->Vt);
    free(bs->e);
    *bs = (bit_score){ 0 };
}

/* the targets' value rows, one token (of every stream) at a time */
static int bits_load(bit_score *bs, const char *trace, int K, kv_err *err)
{
    kv_trace *t = kv_trace_open(trace, MPI_COMM_SELF, err);
    if (!t) return err->code;
    const kv_trace_info *in = kv_trace_get_info(t);
    int64_t S = in->S, m = in->m, dv = in->dv, d = in->d;
    *bs = (bit_score){ S, m, dv, K, NULL, NULL };
    if (!in->has_query_target) {
        kv_trace_close(t);
        return kv_seterr(err, KV_EINPUT, "sweep: --score bits needs /query_target in the trace (kinds jl, index, packing)");
    }
    int64_t *tgt = malloc(sizeof(int64_t) * (size_t)(S * m));
    float *Kb = malloc(sizeof(float) * (size_t)(S * d)), *Vb = malloc(sizeof(float) * (size_t)(S * dv));
    bs->Vt = malloc(sizeof(float) * (size_t)(S * m * dv));
    bs->e = malloc(sizeof(double) * (size_t)(K * S * m));
    int rc = !tgt || !Kb || !Vb || !bs->Vt || !bs->e ? kv_seterr(err, KV_EINTERNAL, "sweep: out of memory") : KV_OK;
    if (!rc) rc = kv_trace_read_query_target(t, 0, m, tgt, err);
    for (int64_t s = 0; !rc && s < S; s++)
        for (int64_t j = 0; !rc && j < m; j++) {
            rc = kv_trace_read_kv(t, tgt[s * m + j], 1, Kb, Vb, err);
            if (!rc) memcpy(bs->Vt + (s * m + j) * dv, Vb + s * dv, sizeof(float) * (size_t)dv);
        }
    kv_trace_close(t);
    free(tgt); free(Kb); free(Vb);
    if (rc == KV_EINPUT) { /* the trace was checked already: no failure here is the user's */
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        kv_err_clear(err);
        rc = kv_seterr(err, KV_EINTERNAL, "sweep --score bits: %s", msg);
    }
    return rc;
}

/* the replay's on_outputs: z[(s cnt + jj) dv + c] of queries [j0, j0 + cnt) */
static int bits_score(void *ctx, int mi, int64_t j0, int64_t cnt, const float *z, kv_err *err)
{
    (void)err;
    bit_score *bs = ctx;
    if (mi >= bs->K) return KV_OK; /* the exact the replay added */
    for (int64_t s = 0; s < bs->S; s++)
        for (int64_t jj = 0; jj < cnt; jj++) {
            int64_t q = s * bs->m + j0 + jj, wrong = 0;
            const float *zz = z + (s * cnt + jj) * bs->dv, *v = bs->Vt + q * bs->dv;
            for (int64_t c = 0; c < bs->dv; c++) wrong += !((zz[c] > 0 && v[c] > 0) || (zz[c] < 0 && v[c] < 0));
            bs->e[(int64_t)mi * bs->S * bs->m + q] = (double)wrong / (double)bs->dv;
        }
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
    int ns = 0, K = o->seeds > 1 ? o->seeds : 1, rank;
    MPI_Comm_rank(comm, &rank);
    if (kv_spec_parse_list(spec, &sp, &ns, err)) return err->code;
    if (!kv_method_param(kv_method_find(sp[0].method), "seed") || kv_spec_has(&sp[0], "seed")) K = 1;
    kv_study st = { 0 };
    for (int i = 0; i < K && !err->code; i++) {
        char extra[96], one[600];
        snprintf(extra, sizeof extra, "seed=%llu,name=sweep%d", (unsigned long long)(o->gen.seed + (uint64_t)i), i);
        if (K == 1) kv_study_add(&st, spec, err); /* the spec as given, whatever its length */
        else if (kv_spec_format(&sp[0], extra, one, sizeof one)) kv_seterr(err, KV_EINPUT, "sweep: spec '%s' is too long", spec);
        else kv_study_add(&st, one, err);
    }
    free(sp);
    double *p = kv_calloc((size_t)K, sizeof(double), err);
    bit_score bs = { 0 };
    if (!err->code && o->score_bits && rank == 0) bits_load(&bs, trace, K, err);
    if (kv_agree(comm, err)) {
        kv_study_free(&st);
        bits_free(&bs);
        free(p);
        return err->code;
    }
    kv_replay_opts ro;
    kv_replay_defaults(&ro);
    ro.trace = trace;
    ro.quiet = 1;
    ro.bound_ratio = 0;
    ro.seed = o->gen.seed;
    if (o->score_bits) { /* rank 0 scores the outputs as they come */
        ro.on_outputs = bits_score;
        ro.ctx = &bs;
    }
    kv_replay_result res = { 0 };
    int rc = kv_study_run(&st, &ro, comm, &res, err);
    if (!rc) {
        *mem = 0;
        *reads = o->axis_reads ? -INFINITY : NAN;
        for (int i = 0; i < K; i++) {
            const kv_replay_summary *x = &res.methods[i];
            p[i] = x->p95_error;
            if (x->memory_bytes > *mem) *mem = x->memory_bytes;
            if (o->axis_reads && x->read_tokens_per_query > *reads) *reads = x->read_tokens_per_query;
        }
        kv_replay_result_free(&res);
    }
    if (!rc && o->score_bits) { /* rank 0 scored, every rank gets the numbers */
        for (int i = 0; rank == 0 && i < K; i++) p[i] = kv_summarize(bs.e + (size_t)i * (size_t)(bs.S * bs.m), (size_t)(bs.S * bs.m)).p95;
        if (kv_mpi_bcast(p, sizeof(double) * (size_t)K, 0, comm))
            rc = kv_seterr(err, KV_EINTERNAL, "sweep: broadcast of the bit scores failed");
    }
    if (!rc) {
        qsort(p, (size_t)K, sizeof *p, cmp_f64);
        *p95 = p[K / 2];
    }
    kv_study_free(&st);
    bits_free(&bs);
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

static const kv_col sweep_cols[] = {
    KV_COL(row, kind, "kind", KV_COL_STR),
    KV_COL(row, method, "method", KV_COL_STR),
    KV_COL(row, n, "n", KV_COL_I64),
    KV_COL(row, d, "d", KV_COL_I64),
    KV_COL(row, param, "param", KV_COL_I64),
    KV_COL(row, budget, "budget_bytes", KV_COL_I64),
    KV_COL(row, p95, "p95_error", KV_COL_F64),
    KV_COL(row, met, "met", KV_COL_INT),
    KV_COL(row, exact_bytes, "exact_bytes", KV_COL_I64),
    KV_COL(row, keeps_all, "keeps_all", KV_COL_INT),
    KV_COL(row, beta, "beta", KV_COL_F64),
    KV_COL(row, points, "points", KV_COL_I64),
    KV_COL(row, errors, "refused", KV_COL_I64),
    KV_COL(row, reads, "read_tokens", KV_COL_F64),
    { 0 } };

static int write_table(const kv_sweep_opts *o, const row *rows, int nr, kv_err *err)
{
    kv_results *r = kv_results_create(o->out, err);
    if (!r) return err->code;
    int rc = kv_table_write(r, "/sweep", sweep_cols, rows, sizeof *rows, nr, err);
    if (!rc) rc = kv_results_attr_f64(r, "/", "eps", o->eps, err) || kv_results_attr_str(r, "/", "kind", o->gen.kind, err) ||
                  kv_results_attr_str(r, "/", "methods", o->methods, err) ||
                  kv_results_attr_str(r, "/", "format", "kvstream-sweep", err) ||
                  kv_results_attr_i64(r, "/", "queries", o->gen.m, err) ||
                  kv_results_attr_str(r, "/", "query_at", kv_gen_query_at_name(&o->gen), err) ||
                  kv_results_attr_str(r, "/", "score", o->score_bits ? "bit_error" : "rel_error", err) ||
                  kv_results_attr_str(r, "/", "axis", o->axis_reads ? "reads" : "memory", err) ||
                  kv_results_attr_i64(r, "/", "seed", (int64_t)(o->gen.seed & INT64_MAX), err);
    if (rc) rc = err->code;
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
                snprintf(x->kind, sizeof x->kind, "%s", g.kind);
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
    if (!err->code && rank == 0) write_table(o, rows, nr, err);
    kv_agree(comm, err);
    free(rows);
    free(tm);
    return err->code;
}
