/* pareto.c - see pareto.h */
#include <math.h>
#include <stdio.h>
#include "mpi/agree.h"
#include "study/pareto.h"
#include "study/study.h"
#include "study/table.h"

typedef kv_pareto_row row;

static const kv_col pareto_cols[] = {
    KV_COL(row, method, "method", KV_COL_STR),
    KV_COL(row, budget, "budget", KV_COL_STR),
    KV_COL(row, label, "label", KV_COL_STR),
    KV_COL(row, seed, "seed", KV_COL_I64),
    KV_COL(row, memory, "memory_bytes", KV_COL_I64),
    KV_COL(row, p50, "p50_error", KV_COL_F64),
    KV_COL(row, p95, "p95_error", KV_COL_F64),
    KV_COL(row, mean, "mean_error", KV_COL_F64),
    KV_COL(row, max, "max_error", KV_COL_F64),
    KV_COL(row, bound95, "p95_bound_ratio", KV_COL_F64),
    KV_COL(row, read_bytes, "read_bytes_per_query", KV_COL_F64),
    KV_COL(row, read_tokens, "read_tokens_per_query", KV_COL_F64),
    { 0 } };

typedef struct {
    const kv_pareto *p;
    int bound_ratio; /* the replay kept V^T V */
    uint64_t seed;   /* the first seed */
} pareto_run;

/* Rank 0, the replay's on_results: the rows' figures from the replay's
 * result (instance i is row i), then /pareto in the still open -o. */
static int write_pareto(void *ctx, kv_results *r, const kv_replay_result *res, kv_err *err)
{
    const pareto_run *run = ctx;
    const kv_pareto *p = run->p;
    for (int i = 0; i < p->nr; i++) {
        const kv_replay_summary *s = &res->methods[i];
        row *x = &p->rows[i];
        x->memory = s->memory_bytes;
        x->read_bytes = s->read_bytes_per_query;
        x->read_tokens = s->read_tokens_per_query;
        x->p50 = s->p50_error;
        x->p95 = s->p95_error;
        x->mean = s->mean_error;
        x->max = s->max_error;
        x->bound95 = run->bound_ratio ? s->p95_bound_ratio : NAN; /* no V^T V with --no-bound-ratio */
    }
    const char *G = "/pareto";
    if (kv_table_write(r, G, pareto_cols, p->rows, sizeof *p->rows, p->nr, err) ||
        kv_results_attr_str(r, G, "methods", p->methods, err) || kv_results_attr_str(r, G, "budgets", p->budgets, err) ||
        kv_results_attr_i64(r, G, "seeds", p->seeds, err) ||
        kv_results_attr_str(r, G, "axis", p->axis ? "reads" : "memory", err) ||
        kv_results_attr_i64(r, G, "base_seed", (int64_t)run->seed, err))
        return err->code;
    return KV_OK;
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

int kv_pareto_run(kv_pareto *p, kv_replay_opts *ro, MPI_Comm comm, FILE *table, kv_err *err)
{
    kv_study st = { 0 };
    for (int i = 0; i < p->nr && !err->code; i++) kv_study_add(&st, p->rows[i].spec, err);
    if (!kv_agree(comm, err)) {
        pareto_run run = { p, ro->bound_ratio, ro->seed };
        kv_replay_result res = { 0 };
        ro->on_results = write_pareto;
        ro->ctx = &run;
        if (!kv_study_run(&st, ro, comm, &res, err)) { /* its errors are agreed already */
            if (table) print_table(p->rows, p->nr, p->axis, table);
            kv_replay_result_free(&res);
        }
    }
    kv_study_free(&st);
    return err->code;
}
