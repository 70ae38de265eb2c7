/* bench_methods.c - every registered method on a synthetic stream, timed in
 * both regimes and judged against its own floor.
 *
 *   bench_methods [log2_n=16] [d=128] [methods=all, comma-separated names]
 *
 * One rank, the OpenMP threads available; n Gaussian tokens (dv = d), each
 * method made with budget=10% when it takes a budget and that fits (else
 * its defaults); a listed method with parameters (kivi:bits=4) is made as
 * given, its line named by the whole spec:
 *   ingest   the whole stream in blocks of 4096: tokens/s; a global
 *            evictor's blocks are cut at its decision points, each decided
 *            as the driver does on one rank (time included), and it decides
 *            again at each query position before answering
 *   single   16 queries one at a time at prefix n (partial, then feedback
 *            with the query's own (m, l), as the driver does on one rank)
 *   batch    64 queries at spread positions (j + 1) n / 64: one
 *            partial_batch (or select + partial_select) call after the
 *            stream when the method has one, else the stream walked with a
 *            partial (and feedback) call per position (only those timed)
 * Each regime prints us/query, the method's read bytes and flops per query
 * (its cost hook, or replay/cost.h's derivation) and time/floor: us/query
 * over max(bytes / read bandwidth, flops / FMA peak), the floors measured
 * once at start (kernels/floors.h).  Targets, printed PASS or MISS:
 *   floor   time/floor <= 2 in each regime
 *   frac    single: a method holding <= 25% of exact's bytes answers in at
 *           most 2 x (its memory fraction) x exact's single-query time
 *   ingest  >= 1 M tokens/s per core (the target is stated at d = 64)
 * A listed spec with store=f16 (exact:store=f16) is made as on a float16
 * trace, and the stream's keys and values are then rounded to half for
 * every method of the run, so all hold the same numbers.
 * Timings on a shared machine are noisy: run it quiet. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/floors.h"
#include "kernels/half.h"
#include "kernels/partial.h"
#include "methods/common/quant.h"
#include "methods/method.h"
#include "replay/cost.h"

#define NQ 64
#define NS 16
#define BLK 4096

typedef struct {
    int64_t n;
    int d;
    float *K, *V, *Q;
} stream;

typedef struct { double usq, bytes, flops, ratio; } regime;

static kv_query_cost cost_now(const kv_method_ops *o, void *st, int d)
{
    kv_query_cost c = { 0, 0, 0 };
    if (o->cost) o->cost(st, &c);
    (void)d;
    return c;
}

/* the cost of `nq` queries since c0 (hook) or derived per query */
static void cost_since(const kv_method_ops *o, void *st, int d, const kv_query_cost *c0, int nq, regime *g)
{
    if (o->cost) {
        kv_query_cost c1 = cost_now(o, st, d);
        g->bytes = (c1.read_bytes - c0->read_bytes) / nq;
        g->flops = (c1.flops - c0->flops) / nq;
    } else {
        kv_query_cost c = replay_cost_derived(o, st, d, d);
        g->bytes = c.read_bytes;
        g->flops = c.flops;
    }
}

/* budget=10% when the method takes one and it fits, else the defaults */
static int make_as(const kv_method_ops *o, const stream *s, const char *text, kv_spec **spec, void **st,
                   kv_err *err);

/* as given when `given` has parameters, else budget=10% or the defaults */
static int make(const kv_method_ops *o, const char *given, const stream *s, kv_spec **spec, void **st, kv_err *err)
{
    char text[96];
    if (strchr(given, ':')) return make_as(o, s, given, spec, st, err);
    snprintf(text, sizeof text, "%s:budget=10%%", o->name);
    if (kv_method_takes_budget(o) && !make_as(o, s, text, spec, st, err)) return KV_OK;
    free(*spec);
    *spec = NULL;
    *err = (kv_err){ 0, "" };
    return make_as(o, s, o->name, spec, st, err);
}

static int make_as(const kv_method_ops *o, const stream *s, const char *text, kv_spec **spec, void **st,
                   kv_err *err)
{
    int cnt;
    kv_method_ctx ctx = { .d = s->d, .dv = s->d, .scale = 1.0 / sqrt((double)s->d), .n_total = s->n, .rank = 0,
                          .nranks = 1, .seed = 1, .shard_tokens = s->n, .chunk = s->n, .semantics = KV_SEM_FULL,
                          .kv_float16 = strstr(text, "store=f16") != NULL };
    if (kv_spec_parse_list(text, spec, &cnt, err)) return err->code;
    return o->create(&(*spec)[0], &ctx, st, err);
}

/* partial (and feedback) of nq queries at prefix p */
static int ask(const kv_method_ops *o, void *st, const float *Q, int nq, int64_t p, double *out, int dv)
{
    if (o->select && o->partial_select) {
        int L = o->select_len(st);
        int64_t *pp = malloc(sizeof(int64_t) * (size_t)nq);
        double *sel = malloc(sizeof(double) * (size_t)nq * (size_t)L);
        int rc = pp && sel ? KV_OK : KV_EINTERNAL;
        for (int q = 0; q < nq && !rc; q++) pp[q] = p;
        if (!rc) rc = o->select(st, Q, pp, nq, sel);
        if (!rc) rc = o->partial_select(st, Q, pp, nq, sel, out);
        free(pp); free(sel);
        return rc;
    }
    int rc = o->partial(st, Q, nq, p, out);
    if (!rc && o->feedback) {
        double ml[2 * NQ];
        for (int q = 0; q < nq; q++) {
            ml[2 * q] = out[q * KV_PSTATE_LEN(dv) + KV_PS_M];
            ml[2 * q + 1] = out[q * KV_PSTATE_LEN(dv) + KV_PS_L];
        }
        rc = o->feedback(st, Q, nq, p, ml);
    }
    return rc;
}

/* A global evictor's decision at x as the driver makes it on one rank
 * (method.h: decide hooks; one stream, so groups of one; the rank's keys
 * and halo are the merged ones). */
static int decide(const kv_method_ops *o, void *st, int64_t x, int at_query, kv_err *err)
{
    if (!o->decide_need) return KV_OK;
    int64_t need = o->decide_need(st, x, at_query);
    if (need <= 0) return KV_OK;
    int64_t L = need + 1 + (o->decide_extra ? o->decide_extra(st) : 0);
    size_t hl = o->decide_halo_len && o->decide_halo ? o->decide_halo_len(st, x) : 0;
    double *halo = hl ? calloc(hl, sizeof(double)) : NULL;
    kv_evkey *keys = malloc(sizeof(kv_evkey) * (size_t)L);
    void *sts[1] = { st };
    int rc = keys && (halo || !hl) && L <= INT32_MAX ? KV_OK : KV_EINTERNAL;
    if (!rc && hl) o->decide_halo(st, x, halo);
    if (!rc) rc = o->decide_cands(sts, 1, x, halo, (int)L, keys);
    if (!rc) rc = o->decide_apply(sts, 1, x, keys, need);
    free(halo);
    free(keys);
    return rc ? kv_seterr(err, KV_EINTERNAL, "out of memory deciding at %lld", (long long)x) : KV_OK;
}

/* tokens [*at, to) in blocks of BLK, cut at the decision points between
 * (every decide_every tokens) as the driver does */
static int ingest_to(const kv_method_ops *o, void *st, const stream *s, int64_t *at, int64_t to, kv_err *err)
{
    int64_t E = o->decide_need && o->decide_every ? o->decide_every(st) : 0;
    while (*at < to) {
        int64_t m = to - *at < BLK ? to - *at : BLK;
        if (E > 0 && (*at / E + 1) * E < *at + m) m = (*at / E + 1) * E - *at; /* up to the next point */
        if (o->ingest(st, s->K + *at * s->d, s->V + *at * s->d, *at, (size_t)m, err)) return err->code;
        *at += m;
        if (E > 0 && *at % E == 0 && decide(o, st, *at, 0, err)) return err->code;
    }
    return KV_OK;
}

/* one method, both regimes; 0 on success */
static int run(const kv_method_ops *o, const char *given, const stream *s, const kv_floors *fl, double *ingest, size_t *held,
               regime *one, regime *bat, kv_err *err)
{
    int d = s->d;
    size_t sl = KV_PSTATE_LEN(d);
    double *out = malloc(sizeof(double) * sl * NQ);
    kv_spec *spec = NULL;
    void *st = NULL;
    int64_t at = 0;
    if (!out || make(o, given, s, &spec, &st, err)) goto done;
    if (o->horizon) o->horizon(st, s->n);
    double t0 = omp_get_wtime();
    if (ingest_to(o, st, s, &at, s->n, err)) goto done;
    *ingest = (double)s->n / (omp_get_wtime() - t0);
    *held = o->bytes(st);
    if (decide(o, st, s->n, 1, err)) goto done;
    kv_query_cost c0 = cost_now(o, st, d);
    t0 = omp_get_wtime();
    for (int q = 0; q < NS && !err->code; q++)
        if (ask(o, st, s->Q + (size_t)q * d, 1, s->n, out, d)) kv_seterr(err, KV_EINTERNAL, "out of memory");
    one->usq = (omp_get_wtime() - t0) * 1e6 / NS;
    cost_since(o, st, d, &c0, NS, one);
    o->free(st);
    st = NULL;
    free(spec);
    spec = NULL;
    /* batch regime: a fresh state */
    int64_t p[NQ];
    for (int q = 0; q < NQ; q++) p[q] = (q + 1) * s->n / NQ;
    at = 0;
    if (err->code || make(o, given, s, &spec, &st, err)) goto done;
    double tq = 0;
    int whole = (o->partial_batch && !o->feedback) || o->select;
    if (whole) {
        if (o->horizon) o->horizon(st, p[0]);
        if (ingest_to(o, st, s, &at, s->n, err)) goto done;
        c0 = cost_now(o, st, d);
        t0 = omp_get_wtime();
        int rc = o->partial_batch ? o->partial_batch(st, s->Q, p, NQ, out) : KV_OK;
        if (!o->partial_batch) { /* select: candidates, then the answers from them (one rank: they are the merge) */
            int L = o->select_len(st);
            double *sel = malloc(sizeof(double) * NQ * (size_t)L);
            rc = sel ? o->select(st, s->Q, p, NQ, sel) : KV_EINTERNAL;
            if (!rc) rc = o->partial_select(st, s->Q, p, NQ, sel, out);
            free(sel);
        }
        tq = omp_get_wtime() - t0;
        if (rc) kv_seterr(err, KV_EINTERNAL, "out of memory");
    } else {
        c0 = cost_now(o, st, d);
        for (int q = 0; q < NQ && !err->code; q++) {
            if (o->horizon) o->horizon(st, p[q]);
            if (ingest_to(o, st, s, &at, p[q], err) || decide(o, st, p[q], 1, err)) break;
            t0 = omp_get_wtime();
            if (ask(o, st, s->Q + (size_t)q * d, 1, p[q], out, d)) kv_seterr(err, KV_EINTERNAL, "out of memory");
            tq += omp_get_wtime() - t0;
        }
    }
    bat->usq = tq * 1e6 / NQ;
    cost_since(o, st, d, &c0, NQ, bat);
    for (regime *g = one; g; g = g == one ? bat : NULL)
        g->ratio = g->usq / (1e6 * kv_floor_seconds(fl, 1, g->bytes, g->flops));
done:
    if (st) o->free(st);
    free(spec);
    free(out);
    return err->code;
}

int main(int argc, char **argv)
{
    int lg = argc > 1 ? atoi(argv[1]) : 16, d = argc > 2 ? atoi(argv[2]) : 128;
    const char *only = argc > 3 ? argv[3] : NULL;
    if (lg < 8 || lg > 24 || d < 1 || d > 1024) {
        fprintf(stderr, "usage: bench_methods [log2_n 8..24] [d] [methods]\n");
        return 2;
    }
    stream s = { (int64_t)1 << lg, d, NULL, NULL, NULL };
    size_t kv = (size_t)s.n * (size_t)d;
    s.K = malloc(sizeof(float) * kv);
    s.V = malloc(sizeof(float) * kv);
    s.Q = malloc(sizeof(float) * NQ * (size_t)d);
    if (!s.K || !s.V || !s.Q) { fprintf(stderr, "bench_methods: out of memory\n"); return 1; }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < kv; i++) {
        s.K[i] = (float)kv_hash_normal(1, 1, i, 0);
        s.V[i] = (float)kv_hash_normal(1, 2, i, 0);
    }
    for (size_t i = 0; i < NQ * (size_t)d; i++) s.Q[i] = (float)kv_hash_normal(1, 3, i, 0);
    int f16 = only && strstr(only, "store=f16");
    if (f16) { /* exactly half values, as on a float16 trace */
        uint16_t h[1];
        for (size_t i = 0; i < kv; i++) {
            h[0] = kv_half_from_float(s.K[i]);
            kv_half_to_f32(h, 1, &s.K[i]);
            h[0] = kv_half_from_float(s.V[i]);
            kv_half_to_f32(h, 1, &s.V[i]);
        }
    }
    kv_floors fl;
    kv_err err = { 0, "" };
    if (kv_floors_measure(&fl, &err)) { fprintf(stderr, "bench_methods: %s\n", err.msg); return 1; }
    int th = omp_get_max_threads();
    printf("bench_methods: n = 2^%d, d = dv = %d, %d threads; floors: read %.2f GB/s, FMA peak %.1f GFLOP/s (%s)%s\n",
           lg, d, th, fl.read_bw / 1e9, fl.fma_peak / 1e9, kv_floor_isa(),
           f16 ? "; keys and values rounded to half (store=f16 listed)" : "");
    printf("%-16s %10s %8s %12s | %10s %10s %6s | %10s %10s %6s | %s\n", "method", "held", "% exact", "ingest tok/s",
           "1q us/q", "1q MB/q", "/floor", "64q us/q", "64q MB/q", "/floor", "targets");
    /* the listed methods in their order (exact first for the frac target), else every registered one */
    char names[1024];
    snprintf(names, sizeof names, "%s", only ? only : kv_method_names());
    double exact_us = 0, exact_held = 0;
    int miss = 0;
    for (char *tok = strtok(names, ", "); tok; tok = strtok(NULL, ", ")) {
        char base[64];
        snprintf(base, sizeof base, "%.*s", (int)strcspn(tok, ":"), tok);
        const kv_method_ops *o = kv_method_find(base);
        if (!o) {
            printf("%-16s skipped: no such method\n", tok);
            continue;
        }
        double ing = 0;
        size_t held = 0;
        regime one = { 0 }, bat = { 0 };
        err = (kv_err){ 0, "" };
        if (run(o, tok, &s, &fl, &ing, &held, &one, &bat, &err)) {
            printf("%-16s skipped: %s\n", tok, err.msg);
            continue;
        }
        if (!strcmp(tok, "exact")) { exact_us = one.usq; exact_held = (double)held; }
        double frac = exact_held > 0 ? (double)held / exact_held : 1;
        int f1 = one.ratio <= 2, f2 = bat.ratio <= 2, in = ing / th >= 1e6;
        int fr = frac > 0.25 || exact_us <= 0 || one.usq <= 2 * frac * exact_us;
        miss += !f1 + !f2 + !in + !fr;
        printf("%-16s %9.2fM %7.1f%% %12.4g | %10.2f %10.3f %6.2f | %10.2f %10.3f %6.2f | floor %s/%s frac %s "
               "ingest %s\n", tok, (double)held / (1 << 20), 100 * frac, ing, one.usq, one.bytes / 1e6,
               one.ratio, bat.usq, bat.bytes / 1e6, bat.ratio, f1 ? "PASS" : "MISS", f2 ? "PASS" : "MISS",
               frac > 0.25 ? "n/a" : fr ? "PASS" : "MISS", in ? "PASS" : "MISS");
    }
    printf("summary: %d MISS (floor: time/floor <= 2 per regime; frac: single <= 2 x memory fraction x exact's, "
           "for <= 25%% of exact's memory; ingest: >= 1M tok/s per core, stated at d = 64)\n", miss);
    free(s.K); free(s.V); free(s.Q);
    return 0;
}
