/* replay.c - the replay driver (see replay.h). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "mpi/agree.h"
#include "mpi/coll.h"
#include "core/buf.h"
#include "io/ckpt.h"
#include "core/rng.h"
#include "core/signals.h"
#include "mpi/merge.h"
#include "kernels/metrics.h"
#include "kernels/partial.h"
#include "replay/replay.h"
#include "io/results.h"
#include "core/spec.h"
#include "io/trace.h"

typedef struct {
    kv_spec spec;
    const kv_method_ops *ops;
    void **st;              /* one state per stream */
    double t_ingest, t_query;
    int64_t peak;           /* bytes, this rank, max over time */
} instance;

typedef struct {
    const kv_replay_opts *o;
    MPI_Comm comm;
    int rank, P, nthreads;
    kv_trace *tr;
    const kv_trace_info *in;
    int64_t S, n, m, d, dv, C;
    instance *inst;
    int M, ref;             /* methods, index of the exact reference */
    /* this rank's shard walk */
    int64_t cur, loaded, loaded_cnt;
    float *Kbuf, *Vbuf;
    double *gram;           /* [S][dv*dv] upper triangle used, this rank */
    int par_streams;
} replay;

void kv_replay_defaults(kv_replay_opts *o)
{
    memset(o, 0, sizeof *o);
    o->batch = 64;
    o->seed = 1;
    o->semantics = KV_SEM_FULL;
    o->bound_ratio = 1;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int64_t inst_bytes(const instance *x, int64_t S)
{
    int64_t b = 0;
    for (int64_t s = 0; s < S; s++) b += (int64_t)x->ops->bytes(x->st[s]);
    return b;
}

static void gram_update(replay *r, int64_t s, const float *V, int64_t cnt)
{
    int dv = (int)r->dv;
    double *G = r->gram + (size_t)s * dv * dv;
    for (int64_t t = 0; t < cnt; t++) {
        const float *v = V + t * dv;
        for (int i = 0; i < dv; i++) {
            double vi = v[i];
            double *row = G + (size_t)i * dv;
#pragma omp simd
            for (int j = i; j < dv; j++) row[j] += vi * v[j];
        }
    }
}

/* Ingest this rank's tokens with index < p. */
static int advance(replay *r, int64_t p, kv_err *err)
{
    while (r->cur < p && r->cur < r->n) {
        int64_t c = r->cur / r->C, c0 = c * r->C;
        if (c != r->loaded) {
            r->loaded_cnt = min64(r->C, r->n - c0);
            if (kv_trace_read_kv(r->tr, c0, r->loaded_cnt, r->Kbuf, r->Vbuf, err)) return err->code;
            r->loaded = c;
        }
        int64_t end = min64(c0 + r->loaded_cnt, p), off = r->cur - c0, len = end - r->cur;
        for (int mi = 0; mi < r->M; mi++) {
            instance *x = &r->inst[mi];
            int bad = 0;
            double t0 = omp_get_wtime();
#pragma omp parallel for schedule(dynamic) if (r->par_streams) reduction(| : bad)
            for (int64_t s = 0; s < r->S; s++) {
                kv_err e = { 0, "" };
                const float *K = r->Kbuf + (s * r->loaded_cnt + off) * r->d;
                const float *V = r->Vbuf + (s * r->loaded_cnt + off) * r->dv;
                if (x->ops->ingest(x->st[s], K, V, r->cur, (size_t)len, &e)) {
#pragma omp critical(kv_replay_err)
                    kv_seterr(err, e.code, "%s", e.msg);
                    bad = 1;
                }
            }
            x->t_ingest += omp_get_wtime() - t0;
            if (bad) return err->code;
            int64_t b = inst_bytes(x, r->S);
            if (b > x->peak) x->peak = b;
        }
        if (r->gram) {
#pragma omp parallel for schedule(static) if (r->par_streams)
            for (int64_t s = 0; s < r->S; s++)
                gram_update(r, s, r->Vbuf + (s * r->loaded_cnt + off) * r->dv, len);
        }
        r->cur = end;
        if (r->cur == c0 + r->loaded_cnt) r->cur = min64((c + r->P) * r->C, r->n); /* next owned chunk */
    }
    return KV_OK;
}

static int setup(replay *r, kv_err *err)
{
    const kv_replay_opts *o = r->o;
    kv_spec *specs = NULL;
    int ns = 0;
    if (kv_spec_parse_list(o->methods, &specs, &ns, err)) return err->code;
    /* the exact reference (first exact method), added when absent */
    int ref = -1;
    for (int i = 0; i < ns; i++)
        if (!strcmp(specs[i].method, "exact")) { ref = i; break; }
    r->M = ns + (ref < 0);
    r->inst = kv_calloc((size_t)r->M, sizeof *r->inst, err);
    if (!r->inst) { free(specs); return err->code; }
    for (int i = 0; i < ns; i++) r->inst[i].spec = specs[i];
    free(specs);
    if (ref < 0) {
        kv_spec *x = NULL;
        int one;
        if (kv_spec_parse_list("exact", &x, &one, err)) return err->code;
        for (int i = 0; i < ns; i++)
            if (!strcmp(r->inst[i].spec.label, "exact"))
                return kv_seterr(err, KV_EINPUT, "--methods: the label 'exact' is reserved for the exact reference");
        r->inst[ns].spec = x[0];
        free(x);
        ref = ns;
    }
    r->ref = ref;
    for (int i = 0; i < r->M; i++) {
        r->inst[i].ops = kv_method_find(r->inst[i].spec.method);
        if (!r->inst[i].ops)
            return kv_seterr(err, KV_EINPUT, "--methods: unknown method '%s' (known: %s)", r->inst[i].spec.method,
                             kv_method_names());
    }
    return KV_OK;
}

/* tokens in the chunks c = rank, rank + P, ... */
static int64_t shard_tokens(const replay *r)
{
    int64_t t = 0;
    for (int64_t c = r->rank; c * r->C < r->n; c += r->P) t += min64(r->C, r->n - c * r->C);
    return t;
}

static int create_states(replay *r, kv_err *err)
{
    for (int mi = 0; mi < r->M; mi++) {
        instance *x = &r->inst[mi];
        x->st = kv_calloc((size_t)r->S, sizeof(void *), err);
        if (!x->st) return err->code;
        for (int64_t s = 0; s < r->S; s++) {
            kv_method_ctx ctx = { .d = (int)r->d, .dv = (int)r->dv, .scale = r->in->scale, .n_total = r->n,
                                  .stream = s, .rank = r->rank, .nranks = r->P, .seed = r->o->seed,
                                  .shard_tokens = shard_tokens(r),
                                  .semantics = r->o->semantics, .window = r->o->window };
            kv_spec_reset(&x->spec);
            if (x->ops->create(&x->spec, &ctx, &x->st[s], err)) return err->code;
        }
    }
    return KV_OK;
}

static void free_states(replay *r)
{
    for (int mi = 0; r->inst && mi < r->M; mi++) {
        instance *x = &r->inst[mi];
        for (int64_t s = 0; x->st && s < r->S; s++)
            if (x->st[s]) x->ops->free(x->st[s]);
        free(x->st);
    }
    free(r->inst);
}

/* ---- rank 0: metrics, results, table ---- */
typedef struct {
    kv_results *res;
    double *rel;            /* [M][S*m] */
    double *bound;          /* [M][S*m] */
    double *zref, *z, *ev, *work, *G;
    float *zout, *model;
    double model_max, model_sum;
    int64_t model_cnt;
} sink;

static void gname(const replay *r, int mi, char *buf, size_t len)
{
    snprintf(buf, len, "/methods/%s", r->inst[mi].spec.label);
}

static int sink_open(replay *r, sink *k, kv_err *err)
{
    int64_t Sm = r->S * r->m, M = r->M, dv = r->dv;
    k->rel = kv_malloc(sizeof(double) * (size_t)(M * Sm), err);
    k->bound = kv_malloc(sizeof(double) * (size_t)(M * Sm), err);
    k->zref = kv_malloc(sizeof(double) * (size_t)dv, err);
    k->z = kv_malloc(sizeof(double) * (size_t)dv, err);
    k->ev = kv_calloc((size_t)(r->S * dv), sizeof(double), err);
    k->work = kv_malloc(sizeof(double) * (size_t)dv, err);
    k->G = kv_malloc(sizeof(double) * (size_t)(dv * dv), err);
    if (err->code) return err->code;
    if (r->o->save_outputs) {
        k->zout = kv_malloc(sizeof(float) * (size_t)(r->S * r->o->batch * dv), err);
        if (!k->zout) return err->code;
    }
    if (!r->o->out) return KV_OK;
    if (r->o->resume) return KV_OK; /* reopened once the checkpoint is known to fit */
    k->res = kv_results_create(r->o->out, err);
    if (!k->res) return err->code;
    int64_t d2[2] = { r->S, r->m }, d3[3] = { r->S, r->m, r->dv };
    for (int mi = 0; mi < r->M; mi++) {
        char g[128];
        gname(r, mi, g, sizeof g);
        if (kv_results_group(k->res, g, err) || kv_results_dataset(k->res, g, "rel_error", KV_R_F64, 2, d2, err))
            return err->code;
        if (r->gram && kv_results_dataset(k->res, g, "bound_ratio", KV_R_F64, 2, d2, err)) return err->code;
        if (r->o->save_outputs && kv_results_dataset(k->res, g, "outputs", KV_R_F32, 3, d3, err)) return err->code;
    }
    return kv_results_flush(k->res, err);
}

/* Metrics for a merged batch: st [M][S][cnt][sl], gram sums [U][S][dv*dv]. */
static int sink_batch(replay *r, sink *k, const double *st, int64_t j0, int64_t cnt, const double *gsum,
                      const int64_t *uidx, kv_err *err)
{
    int dv = (int)r->dv;
    size_t sl = KV_PSTATE_LEN(dv);
    int64_t S = r->S, m = r->m;
    double *rel_b = malloc(sizeof(double) * (size_t)(S * cnt)), *bnd_b = malloc(sizeof(double) * (size_t)(S * cnt));
    double *opn = malloc(sizeof(double) * (size_t)(S * cnt));
    if (!rel_b || !bnd_b || !opn) { free(rel_b); free(bnd_b); free(opn); return kv_seterr(err, KV_EINTERNAL, "out of memory"); }
    if (gsum) { /* |V_p|_op per (stream, query): power iteration once per distinct position */
        for (int64_t s = 0; s < S; s++) {
            int64_t lastu = -1;
            double last = 0;
            for (int64_t jj = 0; jj < cnt; jj++) {
                if (uidx[jj] != lastu) {
                    const double *U = gsum + ((size_t)uidx[jj] * S + s) * dv * dv;
                    for (int i = 0; i < dv; i++)
                        for (int j = 0; j < dv; j++) k->G[i * dv + j] = j >= i ? U[i * dv + j] : U[j * dv + i];
                    last = kv_opnorm_from_gram(k->G, dv, k->ev + s * dv, k->work);
                    lastu = uidx[jj];
                }
                opn[s * cnt + jj] = last;
            }
        }
    }
    float *model = NULL;
    if (r->in->has_model_outputs && r->o->semantics == KV_SEM_FULL) {
        model = malloc(sizeof(float) * (size_t)(S * cnt * dv));
        if (!model || kv_trace_read_model_outputs(r->tr, j0, cnt, model, err)) {
            free(model); free(rel_b); free(bnd_b); free(opn);
            return err->code ? err->code : kv_seterr(err, KV_EINTERNAL, "out of memory");
        }
    }
    int rc = KV_OK;
    for (int mi = 0; mi < r->M && !rc; mi++) {
        for (int64_t s = 0; s < S; s++)
            for (int64_t jj = 0; jj < cnt; jj++) {
                const double *ref = st + (((size_t)r->ref * S + s) * cnt + jj) * sl;
                const double *x = st + (((size_t)mi * S + s) * cnt + jj) * sl;
                kv_partial_output(ref, dv, k->zref);
                kv_partial_output(x, dv, k->z);
                double e = kv_rel_error(k->z, k->zref, dv);
                rel_b[s * cnt + jj] = e;
                k->rel[(size_t)mi * S * m + s * m + j0 + jj] = e;
                double b = NAN;
                if (gsum) {
                    double sm2 = ref[KV_PS_L] > 0 ? sqrt(ref[KV_PS_L2]) / ref[KV_PS_L] : 0; /* |softmax(a)|_2 */
                    double den = sm2 * opn[s * cnt + jj];
                    b = den > 0 ? kv_l2_dist(k->z, k->zref, dv) / den : 0.0;
                }
                bnd_b[s * cnt + jj] = b;
                k->bound[(size_t)mi * S * m + s * m + j0 + jj] = b;
                if (k->zout)
                    for (int c = 0; c < dv; c++) k->zout[(s * cnt + jj) * dv + c] = (float)k->z[c];
                if (model && mi == r->ref) {
                    double zm[dv];
                    for (int c = 0; c < dv; c++) zm[c] = model[(s * cnt + jj) * dv + c];
                    double me = kv_rel_error(k->zref, zm, dv);
                    if (me > k->model_max) k->model_max = me;
                    k->model_sum += me;
                    k->model_cnt++;
                }
            }
        if (k->res) {
            char g[128];
            gname(r, mi, g, sizeof g);
            rc = kv_results_write_rows(k->res, g, "rel_error", KV_R_F64, j0, cnt, rel_b, err);
            if (!rc && gsum) rc = kv_results_write_rows(k->res, g, "bound_ratio", KV_R_F64, j0, cnt, bnd_b, err);
            if (!rc && k->zout) rc = kv_results_write_rows(k->res, g, "outputs", KV_R_F32, j0, cnt, k->zout, err);
        }
    }
    free(model); free(rel_b); free(bnd_b); free(opn);
    return rc;
}

static void sink_free(sink *k)
{
    free(k->rel); free(k->bound); free(k->zref); free(k->z); free(k->ev); free(k->work); free(k->G); free(k->zout);
}

/* Per-method totals across ranks. */
typedef struct { int64_t mem, peak, clusters, kept; double t_ingest, t_query; } totals;

static void gather_totals(replay *r, totals *t)
{
    for (int mi = 0; mi < r->M; mi++) {
        instance *x = &r->inst[mi];
        int64_t loc[4] = { inst_bytes(x, r->S), x->peak, 0, 0 }, glob[4];
        int has_clusters = 0, has_kept = 0;
        for (int64_t s = 0; s < r->S; s++) {
            kv_method_extra e = { -1, -1 };
            if (x->ops->extra) x->ops->extra(x->st[s], &e);
            if (e.clusters >= 0) { loc[2] += e.clusters; has_clusters = 1; }
            if (e.kept_tokens >= 0) { loc[3] += e.kept_tokens; has_kept = 1; }
        }
        MPI_Allreduce(loc, glob, 4, MPI_INT64_T, MPI_SUM, r->comm);
        double tl[2] = { x->t_ingest, x->t_query }, tg[2];
        MPI_Allreduce(tl, tg, 2, MPI_DOUBLE, MPI_MAX, r->comm);
        t[mi] = (totals){ glob[0], glob[1], has_clusters ? glob[2] : -1, has_kept ? glob[3] : -1, tg[0], tg[1] };
    }
}

/* Every rank gets the per-method figures rank 0 computed. */
static int share_summary(replay *r, sink *k, const totals *t, kv_replay_result *res, kv_err *err)
{
    int M = r->M;
    double *buf = kv_calloc((size_t)M * 3, sizeof(double), err);
    res->methods = kv_calloc((size_t)M, sizeof *res->methods, err);
    if (kv_agree(r->comm, err)) {
        free(buf);
        return err->code;
    }
    int64_t Sm = r->S * r->m;
    for (int mi = 0; r->rank == 0 && mi < M; mi++) {
        kv_summary e = kv_summarize(k->rel + (size_t)mi * Sm, (size_t)Sm);
        buf[mi * 3] = e.mean;
        buf[mi * 3 + 1] = e.p95;
        buf[mi * 3 + 2] = e.max;
    }
    kv_mpi_bcast(buf, sizeof(double) * (size_t)M * 3, 0, r->comm);
    for (int mi = 0; mi < M; mi++) {
        kv_replay_summary *x = &res->methods[mi];
        snprintf(x->label, sizeof x->label, "%s", r->inst[mi].spec.label);
        x->memory_bytes = t[mi].mem;
        x->mean_error = buf[mi * 3];
        x->p95_error = buf[mi * 3 + 1];
        x->max_error = buf[mi * 3 + 2];
    }
    res->n_methods = M;
    free(buf);
    return KV_OK;
}

void kv_replay_result_free(kv_replay_result *res)
{
    if (!res) return;
    free(res->methods);
    res->methods = NULL;
    res->n_methods = 0;
}

static int write_summary(replay *r, sink *k, const totals *t, double wall, kv_err *err)
{
    const kv_replay_opts *o = r->o;
    int64_t Sm = r->S * r->m;
    FILE *f = o->table;
    if (f) {
        fprintf(f, "kvstream replay: %s  streams %lld  tokens %lld  queries %lld  d %lld  dv %lld  ranks %d  threads %d  %.2fs\n",
                kv_trace_path(r->tr), (long long)r->S, (long long)r->n, (long long)r->m, (long long)r->d,
                (long long)r->dv, r->P, r->nthreads, wall);
        fprintf(f, "%-28s %12s %8s %10s %10s %10s %10s %14s %10s\n", "method", "memory", "% exact", "mean err", "p99 err",
                "max err", "p95 bound", "ingest tok/s", "us/query");
    }
    double exact_mem = (double)t[r->ref].mem;
    for (int mi = 0; mi < r->M; mi++) {
        kv_summary e = kv_summarize(k->rel + (size_t)mi * Sm, (size_t)Sm);
        kv_summary bd = kv_summarize(k->bound + (size_t)mi * Sm, (size_t)Sm); /* NaN without V^T V */
        double rate = t[mi].t_ingest > 0 ? (double)(r->S * r->n) / t[mi].t_ingest : 0;
        double usq = t[mi].t_query * 1e6 / (double)Sm;
        if (f) {
            char mem[32];
            double b = (double)t[mi].mem;
            if (b >= 1 << 30) snprintf(mem, sizeof mem, "%.2f GiB", b / (1 << 30));
            else if (b >= 1 << 20) snprintf(mem, sizeof mem, "%.2f MiB", b / (1 << 20));
            else snprintf(mem, sizeof mem, "%.1f KiB", b / 1024);
            char bnd[16] = "-"; /* no V^T V with --no-bound-ratio */
            if (!isnan(bd.p95)) snprintf(bnd, sizeof bnd, "%.3g", bd.p95);
            fprintf(f, "%-28.28s %12s %7.2f%% %10.3g %10.3g %10.3g %10s %14.4g %10.2f\n", r->inst[mi].spec.label, mem,
                    exact_mem > 0 ? 100.0 * b / exact_mem : 0.0, e.mean, e.p99, e.max, bnd, rate, usq);
        }
        if (k->res) {
            char g[128];
            gname(r, mi, g, sizeof g);
            kv_results *x = k->res;
            if (kv_results_attr_str(x, g, "spec", r->inst[mi].spec.text, err) ||
                kv_results_attr_str(x, g, "method", r->inst[mi].spec.method, err) ||
                kv_results_attr_i64(x, g, "memory_bytes", t[mi].mem, err) ||
                kv_results_attr_i64(x, g, "peak_memory_bytes", t[mi].peak, err) ||
                kv_results_attr_f64(x, g, "ingest_seconds", t[mi].t_ingest, err) ||
                kv_results_attr_f64(x, g, "query_seconds", t[mi].t_query, err) ||
                kv_results_attr_i64(x, g, "clusters", t[mi].clusters, err) ||
                kv_results_attr_i64(x, g, "kept_tokens", t[mi].kept, err) ||
                kv_results_attr_i64(x, g, "is_reference", mi == r->ref, err))
                return err->code;
        }
    }
    if (f && k->model_cnt)
        fprintf(f, "exact vs the model's own attention outputs (/model_outputs): max rel err %.3g, mean %.3g\n",
                k->model_max, k->model_sum / (double)k->model_cnt);
    if (k->res) {
        kv_results *x = k->res;
        const char *sem = o->semantics == KV_SEM_FULL ? "full" : "window-unmasked-values";
        int64_t dm[1] = { r->m };
        if (kv_results_attr_str(x, "/", "format", "kvstream-results", err) ||
            kv_results_attr_i64(x, "/", "version", 1, err) ||
            kv_results_attr_str(x, "/", "trace", kv_trace_path(r->tr), err) ||
            kv_results_attr_i64(x, "/", "ranks", r->P, err) ||
            kv_results_attr_i64(x, "/", "threads", r->nthreads, err) ||
            kv_results_attr_str(x, "/", "kvstream_version", KVSTREAM_VERSION, err) ||
            kv_results_attr_str(x, "/", "methods", o->methods, err) ||
            kv_results_attr_str(x, "/", "reference", r->inst[r->ref].spec.label, err) ||
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
            kv_results_write_all(x, "/", "query_pos", KV_R_I64, 1, dm, kv_trace_query_pos(r->tr), err))
            return err->code;
        if (k->model_cnt && kv_results_attr_f64(x, "/", "model_outputs_max_rel_error", k->model_max, err))
            return err->code;
    }
    return KV_OK;
}

static void progress(replay *r, int64_t done_q, int64_t pos, double t0, double *last)
{
    if (r->o->quiet || r->rank != 0) return;
    double now = omp_get_wtime();
    if (now - *last < 1.0) return; /* at most once a second */
    *last = now;
    double el = now - t0, rate = el > 0 ? (double)pos / el : 0;
    double eta = pos > 0 ? el * (double)(r->n - pos) / (double)pos : 0;
    fprintf(stderr, "replay: tokens %lld/%lld  queries %lld/%lld  %.3g tok/s  elapsed %.0fs  ETA %.0fs\n",
            (long long)pos, (long long)r->n, (long long)done_q, (long long)r->m, rate, el, eta);
}

/* ---- checkpoints ---- */

/* Identifies the trace: shape, scale, query positions and its first rows. */
static int64_t fingerprint(replay *r, kv_err *err)
{
    uint64_t h = kv_hash4((uint64_t)r->S, (uint64_t)r->n, (uint64_t)r->m, (uint64_t)(r->d << 20 | r->dv));
    double sc = r->in->scale;
    uint64_t bits;
    memcpy(&bits, &sc, sizeof bits);
    h = kv_hash4(h, bits, 0, 0);
    const int64_t *pos = kv_trace_query_pos(r->tr);
    for (int64_t j = 0; j < r->m; j++) h = kv_hash4(h, (uint64_t)pos[j], (uint64_t)j, 1);
    int64_t cnt = min64(r->n, 16);
    float *K = kv_malloc(sizeof(float) * (size_t)(r->S * cnt * r->d), err);
    float *V = kv_malloc(sizeof(float) * (size_t)(r->S * cnt * r->dv), err);
    if (K && V && !kv_trace_read_kv(r->tr, 0, cnt, K, V, err)) {
        for (int64_t i = 0; i < r->S * cnt * r->d; i++) { uint32_t b; memcpy(&b, &K[i], 4); h = kv_hash4(h, b, (uint64_t)i, 2); }
        for (int64_t i = 0; i < r->S * cnt * r->dv; i++) { uint32_t b; memcpy(&b, &V[i], 4); h = kv_hash4(h, b, (uint64_t)i, 3); }
    }
    free(K);
    free(V);
    return (int64_t)(h & INT64_MAX);
}

static void fill_meta(replay *r, kv_ckpt_meta *m, int64_t fp, int64_t next)
{
    const kv_replay_opts *o = r->o;
    memset(m, 0, sizeof *m);
    snprintf(m->trace, sizeof m->trace, "%s", o->trace);
    snprintf(m->methods, sizeof m->methods, "%s", o->methods);
    snprintf(m->semantics, sizeof m->semantics, "%s", o->semantics == KV_SEM_FULL ? "full" : "window-unmasked-values");
    snprintf(m->out, sizeof m->out, "%s", o->out ? o->out : "");
    m->ranks = r->P; m->S = r->S; m->n = r->n; m->m = r->m; m->d = r->d; m->dv = r->dv;
    m->seed = (int64_t)(o->seed & INT64_MAX); m->window = o->window; m->batch = o->batch;
    m->shard_chunk = r->C; m->bound_ratio = o->bound_ratio; m->fingerprint = fp; m->next_query = next;
}

#define CK_MAGIC INT64_C(0x4b56434b50543031) /* "KVCKPT01" */

/* this rank's state: methods, shard position, V^T V, and on rank 0 the metrics so far */
static int save_state(replay *r, const sink *k, kv_buf *b, kv_err *err)
{
    kv_buf_put_i64(b, CK_MAGIC);
    kv_buf_put_i64(b, r->cur);
    for (int mi = 0; mi < r->M; mi++) {
        instance *x = &r->inst[mi];
        if (!x->ops->save) return kv_seterr(err, KV_EINPUT, "--checkpoint: method '%s' cannot be checkpointed", x->spec.text);
        kv_buf_put_i64(b, x->peak);
        kv_buf_put_f64(b, x->t_ingest);
        kv_buf_put_f64(b, x->t_query);
        for (int64_t s = 0; s < r->S; s++) {
            kv_buf one;
            kv_buf_init(&one);
            x->ops->save(x->st[s], &one);
            if (one.failed) {
                kv_buf_free(&one);
                return kv_seterr(err, KV_EINTERNAL, "checkpoint: method '%s' could not save its state (out of memory, "
                                 "or a part of it cannot be checkpointed)", x->spec.text);
            }
            kv_buf_put_arr(b, one.data, one.len);
            kv_buf_free(&one);
        }
    }
    size_t gl = (size_t)(r->dv * r->dv);
    if (r->gram) kv_buf_put_arr(b, r->gram, sizeof(double) * (size_t)r->S * gl);
    if (r->rank == 0) {
        size_t all = (size_t)(r->M * r->S * r->m);
        kv_buf_put_arr(b, k->rel, sizeof(double) * all);
        kv_buf_put_arr(b, k->bound, sizeof(double) * all);
        kv_buf_put_arr(b, k->ev, sizeof(double) * (size_t)(r->S * r->dv));
        kv_buf_put_f64(b, k->model_max);
        kv_buf_put_f64(b, k->model_sum);
        kv_buf_put_i64(b, k->model_cnt);
    }
    if (b->failed) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    return KV_OK;
}

static int load_array(kv_rd *rd, void *dst, size_t bytes, kv_err *err)
{
    void *p;
    size_t n;
    if (kv_rd_arr(rd, &p, 1, bytes, &n, err)) return err->code;
    int bad = n != bytes;
    if (!bad && n) memcpy(dst, p, n);
    free(p);
    return bad ? kv_seterr(err, KV_EINPUT, "checkpoint: %s has the wrong size", rd->what) : KV_OK;
}

static int load_state(replay *r, sink *k, const void *blob, size_t len, kv_err *err)
{
    kv_rd rd = { .data = blob, .len = len, .what = "the replay" };
    int64_t magic, cur;
    if (kv_rd_i64(&rd, &magic, err) || kv_rd_i64(&rd, &cur, err)) return err->code;
    if (magic != CK_MAGIC || cur < 0 || cur > r->n) return kv_seterr(err, KV_EINPUT, "checkpoint: replay state is corrupt");
    r->cur = cur;
    for (int mi = 0; mi < r->M; mi++) {
        instance *x = &r->inst[mi];
        if (!x->ops->load) return kv_seterr(err, KV_EINPUT, "--resume: method '%s' cannot be checkpointed", x->spec.text);
        if (kv_rd_i64(&rd, &x->peak, err) || kv_rd_f64(&rd, &x->t_ingest, err) || kv_rd_f64(&rd, &x->t_query, err))
            return err->code;
        for (int64_t s = 0; s < r->S; s++) {
            int64_t n;
            if (kv_rd_i64(&rd, &n, err)) return err->code;
            if (n < 0 || (size_t)n > rd.len - rd.pos) return kv_seterr(err, KV_EINPUT, "checkpoint: method state is truncated");
            kv_rd one = { .data = rd.data + rd.pos, .len = (size_t)n, .what = x->spec.method };
            if (x->ops->load(x->st[s], &one, err)) return err->code;
            if (one.pos != one.len)
                return kv_seterr(err, KV_EINPUT, "checkpoint: method '%s' state has trailing bytes", x->spec.text);
            rd.pos += (size_t)n;
        }
    }
    size_t gl = (size_t)(r->dv * r->dv);
    rd.what = "V^T V";
    if (r->gram && load_array(&rd, r->gram, sizeof(double) * (size_t)r->S * gl, err)) return err->code;
    if (r->rank == 0) {
        size_t all = (size_t)(r->M * r->S * r->m);
        rd.what = "the metrics";
        if (load_array(&rd, k->rel, sizeof(double) * all, err) || load_array(&rd, k->bound, sizeof(double) * all, err) ||
            load_array(&rd, k->ev, sizeof(double) * (size_t)(r->S * r->dv), err) ||
            kv_rd_f64(&rd, &k->model_max, err) || kv_rd_f64(&rd, &k->model_sum, err) || kv_rd_i64(&rd, &k->model_cnt, err))
            return err->code;
    }
    if (rd.pos != rd.len) return kv_seterr(err, KV_EINPUT, "checkpoint: replay state has trailing bytes");
    return KV_OK;
}

static int write_checkpoint(replay *r, sink *k, int64_t fp, int64_t next, kv_err *err)
{
    kv_buf b;
    kv_buf_init(&b);
    save_state(r, k, &b, err);
    if (!err->code && k->res) kv_results_flush(k->res, err); /* rows < next are durable */
    if (kv_agree(r->comm, err)) { kv_buf_free(&b); return err->code; }
    kv_ckpt_meta m;
    fill_meta(r, &m, fp, next);
    kv_ckpt_write(r->o->checkpoint, r->comm, &m, b.data, b.len, err);
    kv_buf_free(&b);
    return kv_agree(r->comm, err);
}

/* --max-memory: the methods' upper bounds plus the driver's buffers */
static int check_memory(replay *r, size_t buffers, kv_err *err)
{
    if (r->o->max_memory <= 0) return KV_OK;
    int64_t need = (int64_t)buffers, worst = 0;
    int worst_mi = -1;
    for (int mi = 0; mi < r->M; mi++) {
        instance *x = &r->inst[mi];
        if (!x->ops->max_bytes)
            return kv_seterr(err, KV_EINPUT, "--max-memory: method '%s' cannot bound its memory in advance", x->spec.text);
        int64_t b = 0;
        for (int64_t s = 0; s < r->S; s++) b += x->ops->max_bytes(x->st[s]);
        need += b;
        if (b > worst) { worst = b; worst_mi = mi; }
    }
    if (need > r->o->max_memory)
        return kv_seterr(err, KV_EINPUT, "--max-memory %lld: this rank would need up to %lld bytes (largest: %s %lld, "
                         "replay buffers %zu)", (long long)r->o->max_memory, (long long)need,
                         worst_mi >= 0 ? r->inst[worst_mi].spec.text : "-", (long long)worst, buffers);
    return KV_OK;
}

int kv_replay_run(const kv_replay_opts *o, MPI_Comm comm, kv_replay_result *res, kv_err *err)
{
    replay R = { .o = o, .comm = comm, .loaded = -1 }, *r = &R;
    MPI_Comm_rank(comm, &r->rank);
    MPI_Comm_size(comm, &r->P);
    r->nthreads = omp_get_max_threads();
    double t_start = omp_get_wtime();
    sink K = { 0 };
    kv_merge mg;
    int have_merge = 0;
    double *send = NULL, *recv = NULL, *gsend = NULL, *gsum = NULL;
    int64_t *uidx = NULL;
    float *Q = NULL;

    if (o->batch < 1) kv_seterr(err, KV_EINPUT, "--batch must be >= 1");
    if (o->semantics == KV_SEM_WINDOW_UNMASKED && o->window < 1)
        kv_seterr(err, KV_EINPUT, "--semantics window-unmasked-values needs --window W >= 1");
    if (!err->code) setup(r, err);
    if (kv_agree(comm, err)) goto out;
    r->tr = kv_trace_open(o->trace, comm, err);
    if (kv_agree(comm, err)) goto out;
    r->in = kv_trace_get_info(r->tr);
    r->S = r->in->S; r->n = r->in->n; r->m = r->in->m; r->d = r->in->d; r->dv = r->in->dv;
    /* shard unit: the file's chunk, but small enough that every rank gets tokens */
    r->C = o->shard_chunk > 0 ? o->shard_chunk : r->in->chunk > 0 ? r->in->chunk : 4096;
    if (!o->shard_chunk && r->C > (r->n + r->P - 1) / r->P) r->C = (r->n + r->P - 1) / r->P;
    if (r->C > r->n) r->C = r->n;
    r->par_streams = r->S > 1 && r->nthreads > 1;
    create_states(r, err);
    for (int mi = 0; mi < r->M && !err->code && (o->checkpoint || o->resume); mi++)
        if (!r->inst[mi].ops->save || !r->inst[mi].ops->load)
            kv_seterr(err, KV_EINPUT, "--checkpoint/--resume: method '%s' cannot be checkpointed", r->inst[mi].spec.text);
    if (kv_agree(comm, err)) goto out;

    int64_t B = o->batch < r->m ? o->batch : r->m, dv = r->dv;
    size_t sl = KV_PSTATE_LEN(dv), nst = (size_t)(r->M * r->S * B) * sl;
    size_t gl = (size_t)(dv * dv);
    r->Kbuf = kv_malloc(sizeof(float) * (size_t)(r->S * r->C * r->d), err);
    r->Vbuf = kv_malloc(sizeof(float) * (size_t)(r->S * r->C * dv), err);
    Q = kv_malloc(sizeof(float) * (size_t)(r->S * B * r->d), err);
    send = kv_malloc(sizeof(double) * nst, err);
    uidx = kv_malloc(sizeof(int64_t) * (size_t)B, err);
    if (o->bound_ratio) {
        r->gram = kv_calloc((size_t)r->S * gl, sizeof(double), err);
        gsend = kv_malloc(sizeof(double) * (size_t)(B * r->S) * gl, err);
    }
    {
        size_t buffers = sizeof(float) * (size_t)(r->S * r->C * (r->d + dv) + r->S * B * r->d) +
                         sizeof(double) * nst * (r->rank == 0 ? 2 : 1) +
                         (o->bound_ratio ? sizeof(double) * (size_t)(r->S + B * r->S * (r->rank == 0 ? 2 : 1)) * gl : 0) +
                         (r->rank == 0 ? 2 * sizeof(double) * (size_t)(r->M * r->S * r->m) : 0);
        if (!err->code) check_memory(r, buffers, err);
    }
    if (kv_agree(comm, err)) goto out;
    if (r->rank == 0) {
        recv = kv_malloc(sizeof(double) * nst, err);
        if (o->bound_ratio) gsum = kv_malloc(sizeof(double) * (size_t)(B * r->S) * gl, err);
        if (!err->code) sink_open(r, &K, err);
    }
    if (!err->code) have_merge = kv_merge_init(&mg, (int)dv) == MPI_SUCCESS;
    if (!err->code && !have_merge) kv_seterr(err, KV_EINTERNAL, "cannot create the MPI merge operator");
    if (kv_agree(comm, err)) goto out;

    const int64_t *pos = kv_trace_query_pos(r->tr);
    r->cur = min64((int64_t)r->rank * r->C, r->n);
    int64_t fp = (o->checkpoint || o->resume) ? fingerprint(r, err) : 0, j_start = 0;
    if (kv_agree(comm, err)) goto out;
    if (o->resume) {
        kv_ckpt_meta want, got;
        void *blob = NULL;
        size_t len = 0;
        fill_meta(r, &want, fp, 0);
        if (!kv_ckpt_read(o->resume, comm, &want, &got, &blob, &len, err)) {
            load_state(r, &K, blob, len, err);
            j_start = got.next_query;
        }
        free(blob);
        /* rows before the checkpoint are in the results file already */
        if (!err->code && r->rank == 0 && o->out) K.res = kv_results_reopen(o->out, err);
        if (kv_agree(comm, err)) goto out;
    }
    kv_signals_install();
    double last_progress = t_start;
    for (int64_t j0 = j_start; j0 < r->m; j0 += B) {
        int64_t cnt = min64(B, r->m - j0), nu = 0;
        if (!err->code) kv_trace_read_queries(r->tr, j0, cnt, Q, err);
        for (int64_t jj = 0; jj < cnt && !err->code;) {
            int64_t p = pos[j0 + jj], g = 1;
            while (jj + g < cnt && pos[j0 + jj + g] == p) g++; /* queries sharing a prefix */
            if (advance(r, p, err)) break;
            for (int mi = 0; mi < r->M; mi++) {
                instance *x = &r->inst[mi];
                double t0 = omp_get_wtime();
                int bad = 0;
#pragma omp parallel for schedule(dynamic) reduction(| : bad) if (r->par_streams)
                for (int64_t s = 0; s < r->S; s++)
                    bad |= x->ops->partial(x->st[s], Q + (s * cnt + jj) * r->d, (int)g, p,
                                           send + (((size_t)mi * r->S + s) * cnt + jj) * sl) != KV_OK;
                x->t_query += omp_get_wtime() - t0;
                if (bad) kv_seterr(err, KV_EINTERNAL, "method %s: out of memory answering queries at prefix %lld",
                                   x->spec.label, (long long)p);
            }
            if (r->gram) {
                for (int64_t s = 0; s < r->S; s++)
                    memcpy(gsend + ((size_t)nu * r->S + s) * gl, r->gram + (size_t)s * gl, sizeof(double) * gl);
            }
            for (int64_t q = 0; q < g; q++) uidx[jj + q] = nu;
            nu++;
            jj += g;
        }
        /* every rank reaches this point each batch, failed or not */
        if (kv_agree(comm, err)) goto out;
        /* states of a batch are laid out [M][S][cnt]: pack if cnt < B */
        size_t bst = (size_t)(r->M * r->S * cnt) * sl;
        if (kv_merge_reduce(&mg, send, recv, bst / sl, 0, comm) != MPI_SUCCESS)
            kv_seterr(err, KV_EINTERNAL, "MPI_Reduce of partial states failed");
        if (!err->code && r->gram &&
            MPI_Reduce(gsend, gsum, (int)((size_t)nu * r->S * gl), MPI_DOUBLE, MPI_SUM, 0, comm) != MPI_SUCCESS)
            kv_seterr(err, KV_EINTERNAL, "MPI_Reduce of V^T V failed");
        if (!err->code && r->rank == 0) sink_batch(r, &K, recv, j0, cnt, r->gram ? gsum : NULL, uidx, err);
        if (kv_agree(comm, err)) goto out;
        progress(r, j0 + cnt, pos[j0 + cnt - 1], t_start, &last_progress);
        /* a signal on any rank stops all of them, after this batch */
        int64_t done = j0 + cnt;
        if (o->stop_after > 0 && done >= o->stop_after && done < r->m && r->rank == 0) kv_signal_raise(15);
        int sig = kv_signal_pending(), any;
        MPI_Allreduce(&sig, &any, 1, MPI_INT, MPI_MAX, comm);
        int due = o->checkpoint_every > 0 && done / o->checkpoint_every > j0 / o->checkpoint_every && done < r->m;
        if ((any || due) && o->checkpoint && write_checkpoint(r, &K, fp, done, err)) goto out;
        if (any && done < r->m) {
            if (o->checkpoint)
                kv_seterr(err, KV_ESTOPPED, "stopped by signal %d after %lld of %lld queries; checkpoint written to %s "
                          "(continue with --resume %s)", any, (long long)done, (long long)r->m, o->checkpoint, o->checkpoint);
            else
                kv_seterr(err, KV_ESTOPPED, "stopped by signal %d after %lld of %lld queries (no --checkpoint given)", any,
                          (long long)done, (long long)r->m);
            goto out;
        }
    }
    /* the rest of the shard: memory and ingest figures cover the whole trace */
    advance(r, r->n, err);
    if (kv_agree(comm, err)) goto out;
    {
        totals *t = kv_calloc((size_t)r->M, sizeof *t, err);
        if (t) gather_totals(r, t);
        double wall = omp_get_wtime() - t_start;
        if (t && r->rank == 0) write_summary(r, &K, t, wall, err);
        if (t && res) share_summary(r, &K, t, res, err);
        free(t);
    }
    if (K.res) { /* closing flushes: its failure must reach every rank */
        kv_results_close(K.res, err);
        K.res = NULL;
    }
    kv_agree(comm, err);
out:
    if (K.res) { /* an error is already agreed: a close failure adds nothing */
        kv_err e2 = { 0, "" };
        kv_results_close(K.res, &e2);
    }
    sink_free(&K);
    if (have_merge) kv_merge_free(&mg);
    free(send); free(recv); free(gsend); free(gsum); free(uidx); free(Q);
    free(r->Kbuf); free(r->Vbuf); free(r->gram);
    free_states(r);
    if (r->tr) kv_trace_close(r->tr);
    return err->code;
}
