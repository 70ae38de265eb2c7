/* summary.c - totals, the summary table, kv_replay_result, progress (see summary.h). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include "kernels/metrics.h"
#include "mpi/agree.h"
#include "mpi/coll.h"
#include "replay/sizes.h"
#include "replay/cost.h"
#include "replay/errstats.h"
#include "replay/instances.h"
#include "replay/summary.h"

/* Per-method totals across ranks: mem at the end of the stream; peak, the
 * figure memory_bytes reports, the largest over memory epochs of the state
 * summed over ranks (epochs end at each distinct query position, the last
 * one after the tail of the stream: batch.c, sink.c); peak_rank the largest
 * single rank's own peak over time (what one node must hold). */
typedef struct { int64_t mem, peak, peak_rank, clusters, kept, ties; double t_ingest, t_query; } totals;

/* peaks: M int64s of scratch */
static void gather_totals(const replay *r, const replay_sink *k, totals *t, int64_t *peaks, kv_err *err)
{
    for (int mi = 0; mi < r->M; mi++) {
        const replay_instance *x = &r->inst[mi];
        /* x->epoch: this rank's largest state since the last query position */
        int64_t loc[4] = { replay_instance_bytes(x, r->S), replay_instance_epoch(r, x), 0, 0 }, glob[4], rank_peak = x->peak;
        int has_clusters = 0, has_kept = 0;
        int64_t ties = 0; /* every rank counts every decision of its streams: the same number */
        for (int64_t s = 0; s < r->S; s++) {
            kv_method_extra e = { -1, -1, 0 };
            if (x->streamed) e.kept_tokens = 0; /* holds nothing (--reference stream) */
            else if (x->ops->extra) x->ops->extra(x->st[s], &e);
            ties += e.near_ties;
            if (e.clusters >= 0) { loc[2] += e.clusters; has_clusters = 1; }
            if (e.kept_tokens >= 0) { loc[3] += e.kept_tokens; has_kept = 1; }
        }
        double tl[2] = { x->t_ingest, x->t_query }, tg[2];
        /* no early return: every rank makes the same collectives */
        int bad = kv_mpi_sum_i64(loc, glob, 4, r->comm) != MPI_SUCCESS;
        bad |= kv_mpi_max_f64(tl, tg, 2, r->comm) != MPI_SUCCESS;
        bad |= kv_mpi_max_i64(&rank_peak, &rank_peak, 1, r->comm) != MPI_SUCCESS;
        bad |= kv_mpi_max_i64(&ties, &ties, 1, r->comm) != MPI_SUCCESS;
        if (bad) kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the method totals failed");
        t[mi] = (totals){ glob[0], 0, rank_peak, has_clusters ? glob[2] : -1, has_kept ? glob[3] : -1,
                          replay_instance_decides(x) ? ties : -1, tg[0], tg[1] };
        if (r->rank == 0) peaks[mi] = glob[1] > k->mem_peak[mi] ? glob[1] : k->mem_peak[mi];
    }
    /* the epochs' maximum lives on rank 0 (sink.c) */
    if (kv_mpi_bcast(peaks, sizeof(int64_t) * (size_t)r->M, 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Bcast of the memory peaks failed");
    for (int mi = 0; mi < r->M; mi++) t[mi].peak = peaks[mi];
}

void kv_replay_result_free(kv_replay_result *res)
{
    if (!res) return;
    free(res->methods);
    res->methods = NULL;
    res->n_methods = 0;
}

/* memory on the axis quantised and evicting methods share: peak bits per
 * token of the stream (memory_bytes x 8 / (S n): per stream, all ranks) */
static double bits_per_token(const replay *r, int64_t bytes)
{
    return r->S * r->n > 0 ? (double)bytes * 8.0 / (double)(r->S * r->n) : 0.0;
}

/* Rank 0: method mi's per-query costs (cost.h): means over the S m
 * queries, and the p95 of the read tokens. */
typedef struct { double bytes, tokens, flops, tokens_p95; } query_cost;

static query_cost cost_of(const replay *r, const replay_sink *k, int mi)
{
    int64_t Sm = r->S * r->m;
    const double *c = k->csum + (size_t)mi * REPLAY_COST_LEN;
    double q = Sm > 0 ? (double)Sm : 1.0;
    kv_summary t = kv_summarize(k->rtok + (size_t)mi * Sm, (size_t)Sm);
    return (query_cost){ c[REPLAY_COST_BYTES] / q, c[REPLAY_COST_TOKENS] / q, c[REPLAY_COST_FLOPS] / q, t.p95 };
}

/* us/query over the floor's us/query (NaN: no floors, or nothing measured:
 * the stream reference reads the trace, not a state) */
static double time_over_floor(const replay *r, const query_cost *c, double usq)
{
    if (r->fl.read_bw <= 0 || (c->bytes <= 0 && c->flops <= 0)) return NAN;
    return usq / (1e6 * kv_floor_seconds(&r->fl, r->P, c->bytes, c->flops));
}

static void print_header(const replay *r, FILE *f, double wall)
{
    fprintf(f, "kvstream replay: %s  streams %lld  tokens %lld  queries %lld  d %lld  dv %lld  ranks %d  threads %d  %.2fs\n",
            kv_trace_path(r->tr), (long long)r->S, (long long)r->n, (long long)r->m, (long long)r->d,
            (long long)r->dv, r->P, r->nthreads, wall);
    fprintf(f, "%-28s %12s %8s %9s %10s %10s %10s %14s %10s %10s\n", "method", "memory", "% exact", "bits/tok",
            "p50 err", "p95 err", "p95 bound", "ingest tok/s", "us/query", "time/floor");
}

static void print_row(const replay *r, const replay_sink *k, const totals *t, int mi, FILE *f)
{
    int64_t Sm = r->S * r->m;
    replay_errstats e = replay_errstats_of(r, k, mi, -1);
    double rate = t[mi].t_ingest > 0 ? (double)(r->S * r->n) / t[mi].t_ingest : 0;
    double usq = t[mi].t_query * 1e6 / (double)Sm;
    /* % of exact: of what the reference held; with a reference that holds
     * nothing (stream, none), of the trace's keys and values, S n (d + dv) 4 bytes */
    double exact_mem = r->ref >= 0 ? (double)t[r->ref].peak : 0;
    if (exact_mem <= 0) exact_mem = 4.0 * (double)(r->S * r->n * (r->d + r->dv));
    char mem[32];
    double b = (double)t[mi].peak;
    if (b >= 1 << 30) snprintf(mem, sizeof mem, "%.2f GiB", b / (1 << 30));
    else if (b >= 1 << 20) snprintf(mem, sizeof mem, "%.2f MiB", b / (1 << 20));
    else snprintf(mem, sizeof mem, "%.1f KiB", b / 1024);
    char bnd[16] = "-"; /* no V^T V with --no-bound-ratio */
    if (!isnan(e.bound_p95)) snprintf(bnd, sizeof bnd, "%.3g", e.bound_p95);
    double pct = exact_mem > 0 ? 100.0 * b / exact_mem : 0.0, bpt = bits_per_token(r, t[mi].peak);
    query_cost c = cost_of(r, k, mi);
    char tf[16] = "-";
    double ratio = time_over_floor(r, &c, usq);
    if (!isnan(ratio)) snprintf(tf, sizeof tf, "%.2f", ratio);
    if (r->ref < 0) { /* --reference none: no errors to show */
        fprintf(f, "%-28.28s %12s %7.2f%% %9.1f %10s %10s %10s %14.4g %10.2f %10s\n", r->inst[mi].spec.label, mem,
                pct, bpt, "-", "-", "-", rate, usq, tf);
        return;
    }
    fprintf(f, "%-28.28s %12s %7.2f%% %9.1f %10.3g %10.3g %10s %14.4g %10.2f %10s\n", r->inst[mi].spec.label,
            mem, pct, bpt, e.p50, e.p95, bnd, rate, usq, tf);
}

static int method_attrs(const replay *r, const replay_sink *k, kv_results *x, const totals *t, int mi, kv_err *err)
{
    char g[128];
    query_cost c = cost_of(r, k, mi);
    double usq = t[mi].t_query * 1e6 / (double)(r->S * r->m > 0 ? r->S * r->m : 1);
    replay_sink_group(r, mi, g, sizeof g);
    const kv_spec *sp = &r->inst[mi].spec;
    if (kv_results_attr_str(x, g, "spec", sp->text, err) ||
        kv_results_attr_str(x, g, "method", sp->method, err) ||
        kv_results_attr_i64(x, g, "memory_bytes", t[mi].peak, err) ||
        kv_results_attr_i64(x, g, "peak_memory_bytes", t[mi].peak, err) ||
        kv_results_attr_f64(x, g, "bits_per_token", bits_per_token(r, t[mi].peak), err) ||
        kv_results_attr_i64(x, g, "final_memory_bytes", t[mi].mem, err) ||
        kv_results_attr_i64(x, g, "peak_rank_bytes", t[mi].peak_rank, err) ||
        kv_results_attr_f64(x, g, "ingest_seconds", t[mi].t_ingest, err) ||
        kv_results_attr_f64(x, g, "query_seconds", t[mi].t_query, err) ||
        kv_results_attr_i64(x, g, "clusters", t[mi].clusters, err) ||
        kv_results_attr_i64(x, g, "kept_tokens", t[mi].kept, err) ||
        kv_results_attr_f64(x, g, "read_bytes_per_query", c.bytes, err) ||
        kv_results_attr_f64(x, g, "flops_per_query", c.flops, err) ||
        kv_results_attr_f64(x, g, "read_tokens_per_query", c.tokens, err) ||
        kv_results_attr_f64(x, g, "read_tokens_p95", c.tokens_p95, err) ||
        kv_results_attr_f64(x, g, "time_over_floor", time_over_floor(r, &c, usq), err) ||
        kv_results_attr_i64(x, g, "is_reference", mi == r->ref, err))
        return err->code;
    if (t[mi].ties >= 0 && kv_results_attr_i64(x, g, "near_ties", t[mi].ties, err)) return err->code;
    if (r->ref < 0) return KV_OK; /* --reference none: no errors */
    replay_errstats e = replay_errstats_of(r, k, mi, -1);
    if (kv_results_attr_f64(x, g, "rel_error_p50", e.p50, err) ||
        kv_results_attr_f64(x, g, "rel_error_p95", e.p95, err) ||
        kv_results_attr_f64(x, g, "rel_error_p99", e.p99, err) ||
        kv_results_attr_f64(x, g, "rel_error_max", e.max, err) ||
        kv_results_attr_f64(x, g, "rel_error_mean", e.mean, err) ||
        kv_results_attr_f64(x, g, "bound_ratio_p95", e.bound_p95, err) ||
        kv_results_attr_i64(x, g, "small_outputs", e.small, err))
        return err->code;
    return replay_errstats_write(r, k, x, mi, g, err);
}

/* The methods --budget could not hold: a table row each, and a group
 * /does_not_fit/<label> in the results file (no /methods group). */
static int print_unfit(const replay *r, FILE *f, kv_results *x, kv_err *err)
{
    for (int i = 0; i < r->n_unfit; i++) {
        const replay_unfit *u = &r->unfit[i];
        if (f)
            fprintf(f, "%-28.28s does not fit: needs %lld bytes per stream (--budget %s is %lld)\n", u->spec.label,
                    (long long)u->needs, r->o->budget, (long long)u->budget);
        char g[128];
        snprintf(g, sizeof g, "/does_not_fit/%s", u->spec.label);
        if (x && (kv_results_group(x, g, err) || kv_results_attr_str(x, g, "spec", u->spec.text, err) ||
                  kv_results_attr_str(x, g, "method", u->spec.method, err) ||
                  kv_results_attr_i64(x, g, "needs_bytes", u->needs, err) ||
                  kv_results_attr_i64(x, g, "budget_bytes", u->budget, err)))
            return err->code;
    }
    return KV_OK;
}

/* The footer line of the small outputs, when there are any. */
static void print_small(const replay *r, const replay_sink *k, FILE *f)
{
    if (r->ref < 0) return;
    replay_errstats e = replay_errstats_of(r, k, r->ref, -1);
    if (e.small > 0)
        fprintf(f, "small outputs: %lld of %lld queries have |z*| below %.0e x the RMS value norm of their prefix: in "
                "the percentiles, left out of the means (rel_error_mean in -o)\n", (long long)e.small,
                (long long)(r->S * r->m), KV_SMALL_OUTPUT);
}

/* The footer line of the deciding methods' near-ties, when there are any. */
static void print_ties(const replay *r, const totals *t, FILE *f)
{
    int any = 0;
    for (int mi = 0; mi < r->M; mi++) any |= t[mi].ties > 0;
    if (!any) return;
    fprintf(f, "near-ties (eviction decisions by a relative margin below %.0e, which another rank count may take "
            "the other way):", KV_EVICT_TIE_REL);
    for (int mi = 0; mi < r->M; mi++)
        if (t[mi].ties > 0) fprintf(f, " %s %lld", r->inst[mi].spec.label, (long long)t[mi].ties);
    fprintf(f, "\n");
}

static int run_attrs(const replay *r, const replay_sink *k, kv_results *x, double wall, const int64_t *rss,
                     kv_err *err)
{
    const kv_replay_opts *o = r->o;
    const char *sem = o->semantics == KV_SEM_FULL ? "full" : "window-unmasked-values";
    static const char *const mode[] = { "memory", "stream", "none" }; /* kv_reference */
    int64_t dm[1] = { r->m };
    if (kv_results_attr_str(x, "/", "format", "kvstream-results", err) ||
        kv_results_attr_i64(x, "/", "version", 1, err) ||
        kv_results_attr_str(x, "/", "trace", kv_trace_path(r->tr), err) ||
        kv_results_attr_i64(x, "/", "ranks", r->P, err) ||
        kv_results_attr_i64(x, "/", "threads", r->nthreads, err) ||
        kv_results_attr_str(x, "/", "kvstream_version", KVSTREAM_VERSION, err) ||
        kv_results_attr_str(x, "/", "methods", o->methods, err) ||
        kv_results_attr_str(x, "/", "reference", r->ref >= 0 ? r->inst[r->ref].spec.label : "none", err) ||
        kv_results_attr_str(x, "/", "reference_mode", mode[o->reference], err) ||
        kv_results_attr_str(x, "/", "semantics", sem, err) ||
        kv_results_attr_i64(x, "/", "window", o->window, err) ||
        kv_results_attr_i64(x, "/", "seed", (int64_t)(o->seed & INT64_MAX), err) ||
        kv_results_attr_i64(x, "/", "batch", o->batch, err) ||
        kv_results_attr_i64(x, "/", "streams", r->S, err) ||
        kv_results_attr_i64(x, "/", "tokens", r->n, err) ||
        kv_results_attr_i64(x, "/", "queries", r->m, err) ||
        kv_results_attr_i64(x, "/", "d", r->d, err) ||
        kv_results_attr_i64(x, "/", "dv", r->dv, err) ||
        kv_results_attr_i64(x, "/", "shard_chunk", r->C, err) ||
        kv_results_attr_f64(x, "/", "wall_seconds", wall, err) ||
        kv_results_attr_f64(x, "/", "small_output_fraction", KV_SMALL_OUTPUT, err) ||
        kv_results_attr_f64(x, "/", "floor_read_bytes_per_second", r->fl.read_bw, err) ||
        kv_results_attr_f64(x, "/", "floor_flops_per_second", r->fl.fma_peak, err) ||
        kv_results_attr_i64(x, "/", "peak_rss_bytes", rss[0], err) ||
        kv_results_attr_i64(x, "/", "replay_buffer_bytes", rss[1], err) ||
        kv_results_write_all(x, "/", "query_pos", KV_R_I64, 1, dm, kv_trace_query_pos(r->tr), err))
        return err->code;
    if (k->model_cnt && kv_results_attr_f64(x, "/", "model_outputs_max_rel_error", k->model_max, err))
        return err->code;
    return KV_OK;
}

/* Rank 0: the table (to o->table) and the results file's attributes. */
/* rss: the largest process peak RSS and the largest rank's replay buffers */
static int write_summary(const replay *r, const replay_sink *k, const totals *t, double wall, const int64_t *rss,
                         kv_err *err)
{
    FILE *f = r->o->table;
    if (f) print_header(r, f, wall);
    for (int mi = 0; mi < r->M; mi++) {
        if (f) print_row(r, k, t, mi, f);
        if (k->res && method_attrs(r, k, k->res, t, mi, err)) return err->code;
    }
    if (print_unfit(r, f, k->res, err)) return err->code;
    if (f) print_ties(r, t, f);
    if (f) print_small(r, k, f);
    if (f && k->model_cnt)
        fprintf(f, "exact vs the model's own attention outputs (/model_outputs): max rel err %.3g, mean %.3g\n",
                k->model_max, k->model_sum / (double)k->model_cnt);
    if (f && r->fl.read_bw > 0)
        fprintf(f, "time/floor: us/query over max(read bytes / %.3g GB/s, flops / %.3g GFLOP/s) per rank x %d ranks "
                "(docs/PERFORMANCE.md, Floors)\n", r->fl.read_bw / 1e9, r->fl.fma_peak / 1e9, r->P);
    if (f)
        fprintf(f, "memory: peak over query positions of the state summed over ranks; process peak RSS %.1f MiB "
                "(largest rank)\n",
                (double)rss[0] / (1 << 20));
    return k->res ? run_attrs(r, k, k->res, wall, rss, err) : KV_OK;
}

/* Every rank gets the per-instance figures rank 0 computed (replay.h). */
enum { NF = 13 };
static void summary_fill(const replay *r, const replay_sink *k, const totals *t, int mi, double *f)
{
    int64_t Sm = r->S * r->m;
    replay_errstats e = replay_errstats_of(r, k, mi, -1); /* the table's and the file's figures */
    query_cost c = cost_of(r, k, mi);
    double usq = t[mi].t_query * 1e6 / (double)(Sm > 0 ? Sm : 1);
    double rate = t[mi].t_ingest > 0 ? (double)(r->S * r->n) / t[mi].t_ingest : 0;
    double v[NF] = { bits_per_token(r, t[mi].peak), e.mean, e.p50, e.p95, e.p99, e.max, e.bound_p95, rate, usq,
                     c.bytes, c.tokens, c.flops, time_over_floor(r, &c, usq) };
    for (int i = 0; i < NF; i++) f[i] = v[i];
}

static int share_summary(const replay *r, const replay_sink *k, const totals *t, kv_replay_result *res, kv_err *err)
{
    int M = r->M;
    double *buf = kv_calloc((size_t)M * NF, sizeof(double), err);
    res->methods = kv_calloc((size_t)M, sizeof *res->methods, err);
    if (kv_agree(r->comm, err)) {
        free(buf);
        kv_replay_result_free(res);
        return err->code;
    }
    for (int mi = 0; r->rank == 0 && mi < M; mi++) summary_fill(r, k, t, mi, buf + (size_t)mi * NF);
    if (kv_mpi_bcast(buf, sizeof(double) * (size_t)M * NF, 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Bcast of the summary failed");
    for (int mi = 0; mi < M; mi++) {
        kv_replay_summary *x = &res->methods[mi];
        const double *f = buf + (size_t)mi * NF;
        *x = (kv_replay_summary){ .memory_bytes = t[mi].peak, .bits_per_token = f[0], .mean_error = f[1],
                                  .p50_error = f[2], .p95_error = f[3], .p99_error = f[4], .max_error = f[5],
                                  .p95_bound_ratio = f[6], .ingest_tok_s = f[7], .us_per_query = f[8],
                                  .read_bytes_per_query = f[9], .read_tokens_per_query = f[10],
                                  .flops_per_query = f[11], .time_over_floor = f[12] };
        snprintf(x->label, sizeof x->label, "%s", r->inst[mi].spec.label);
    }
    res->n_methods = M;
    free(buf);
    return err->code;
}

int replay_summary(replay *r, const replay_sink *k, double t_start, kv_replay_result *res, kv_err *err)
{
    totals *t = kv_calloc((size_t)r->M, sizeof *t, err);
    int64_t *peaks = kv_calloc((size_t)r->M, sizeof *peaks, err);
    /* agree first: a rank without t must not skip the collectives below alone */
    if (kv_agree(r->comm, err)) {
        free(t);
        free(peaks);
        return err->code;
    }
    gather_totals(r, k, t, peaks, err);
    free(peaks);
    /* what the machine paid: the largest process peak RSS over the ranks,
     * beside the replay's own buffers (the methods' are in the totals) */
    struct rusage ru;
    int64_t rss[2] = { getrusage(RUSAGE_SELF, &ru) == 0 ? (int64_t)ru.ru_maxrss * 1024 : -1,
                       (int64_t)replay_sizes_total(&r->z) };
    if (kv_mpi_max_i64(rss, rss, 2, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the peak RSS failed");
    double wall = omp_get_wtime() - t_start;
    /* the floors of the time/floor column: after the RSS, which must not count the probe's arrays */
    if (!err->code) replay_floors_setup(r, err);
    if (r->rank == 0 && !err->code) write_summary(r, k, t, wall, rss, err);
    if (res) share_summary(r, k, t, res, err);
    free(t);
    return err->code;
}

void replay_progress(const replay *r, int64_t done_q, int64_t pos, double t_start, double *last)
{
    if (r->o->quiet || r->rank != 0) return;
    double now = omp_get_wtime();
    if (now - *last < 1.0) return; /* at most once a second */
    *last = now;
    double el = now - t_start, rate = el > 0 ? (double)pos / el : 0;
    double eta = pos > 0 ? el * (double)(r->n - pos) / (double)pos : 0;
    fprintf(stderr, "replay: tokens %lld/%lld  queries %lld/%lld  %.3g tok/s  elapsed %.0fs  ETA %.0fs\n",
            (long long)pos, (long long)r->n, (long long)done_q, (long long)r->m, rate, el, eta);
}
