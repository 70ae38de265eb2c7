/* test_baselines.c - window, sinks, h2o, uniform, topk and unmasked-window
 * driven through their kv_method_ops on generated data.
 *
 * P = 1..4 ranks are emulated in one process (emu.h): tokens are dealt
 * chunk-cyclically (chunk C) to P instances with ctx.rank/nranks set,
 * ingested in random block sizes, and the per-rank partial states are merged
 * in rank order with kv_partial_merge, as the MPI reduction does.  References are computed
 * directly with kv_attn_fold on double states. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "methods/method.h"
#include "kernels/partial.h"
#include "core/rng.h"
#include "emu.h"
#include "testutil.h"

#define MAXP EMU_MAXP
#define NQ 4

typedef struct {
    int d, dv;
    int64_t n;
    float *K, *V;
} data;

/* keys N(0, ks^2), values N(vmean, 1): logits of std ~ks*qs spread the
 * attention over many tokens without making it uniform */
static void data_gen(data *x, int64_t n, int d, int dv, uint64_t seed, double ks, double vmean)
{
    kv_rng r;
    kv_rng_seed(&r, seed, 1, 2);
    x->d = d;
    x->dv = dv;
    x->n = n;
    x->K = malloc(sizeof(float) * (size_t)(n * d));
    x->V = malloc(sizeof(float) * (size_t)(n * dv));
    for (int64_t i = 0; i < n * d; i++) x->K[i] = (float)(ks * kv_rng_normal(&r));
    for (int64_t i = 0; i < n * dv; i++) x->V[i] = (float)(vmean + kv_rng_normal(&r));
}

static void data_free(data *x)
{
    free(x->K);
    free(x->V);
}

static void gen_queries(float *Q, int nq, int d, kv_rng *r, double qs)
{
    for (int i = 0; i < nq * d; i++) Q[i] = (float)(qs * kv_rng_normal(r));
}

static kv_method_ctx make_ctx(const data *x)
{
    kv_method_ctx c;
    memset(&c, 0, sizeof c);
    c.d = x->d;
    c.dv = x->dv;
    c.scale = 1.0 / sqrt((double)x->d);
    c.n_total = x->n;
    c.stream = 0;
    c.rank = 0;
    c.nranks = 1;
    c.seed = 42;
    c.semantics = KV_SEM_FULL;
    c.window = 0;
    return c;
}

/* ---- references ---- */
static void ref_fold(const data *x, const float *Q, int nq, int64_t a, int64_t b, double *st)
{
    if (a < 0) a = 0;
    if (b > a) kv_attn_fold(Q, nq, x->K + a * x->d, x->V + a * x->dv, (size_t)(b - a), x->d, x->dv,
                            (float)(1.0 / sqrt((double)x->d)), st);
}

/* the same in plain double arithmetic (no float tiles): a reference whose
 * own rounding is far below the float kernel's */
static void ref_fold_double(const data *x, const float *Q, int nq, int64_t a, int64_t b, double *st)
{
    size_t sl = KV_PSTATE_LEN(x->dv);
    double scale = 1.0 / sqrt((double)x->d), *t = malloc(sizeof(double) * sl);
    if (a < 0) a = 0;
    for (int q = 0; q < nq && b > a; q++) {
        double m = -INFINITY;
        for (int64_t i = a; i < b; i++) {
            double dot = 0;
            for (int c = 0; c < x->d; c++) dot += (double)Q[q * x->d + c] * x->K[i * x->d + c];
            m = dot * scale > m ? dot * scale : m;
        }
        kv_partial_clear(t, x->dv);
        t[KV_PS_M] = m;
        for (int64_t i = a; i < b; i++) {
            double dot = 0;
            for (int c = 0; c < x->d; c++) dot += (double)Q[q * x->d + c] * x->K[i * x->d + c];
            double e = exp(dot * scale - m);
            t[KV_PS_L] += e;
            t[KV_PS_L2] += e * e;
            for (int c = 0; c < x->dv; c++) t[KV_PS_U + c] += e * x->V[i * x->dv + c];
        }
        kv_partial_merge(st + q * sl, t, x->dv);
    }
    free(t);
}

static void clear_all(double *st, int nq, int dv)
{
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * KV_PSTATE_LEN(dv), dv);
}

/* window-unmasked reference: logit 0 for i < p - W, exact in [p-W, p) */
static void ref_unmasked(const data *x, const float *Q, int nq, int64_t p, int64_t W, double *st)
{
    size_t sl = KV_PSTATE_LEN(x->dv);
    clear_all(st, nq, x->dv);
    int64_t lo = p - W > 0 ? p - W : 0;
    for (int q = 0; q < nq && lo > 0; q++) {
        double *o = st + q * sl;
        o[KV_PS_M] = 0;
        o[KV_PS_L] = o[KV_PS_L2] = (double)lo;
        for (int64_t i = 0; i < lo; i++)
            for (int c = 0; c < x->dv; c++) o[KV_PS_U + c] += x->V[i * x->dv + c];
    }
    ref_fold_double(x, Q, nq, lo, p, st);
}

/* largest relative error of the outputs of nq states vs reference states */
static double max_relerr(const double *st, const double *ref, int nq, int dv)
{
    size_t sl = KV_PSTATE_LEN(dv);
    double z[64], zr[64], worst = 0;
    for (int q = 0; q < nq; q++) {
        kv_partial_output(st + q * sl, dv, z);
        kv_partial_output(ref + q * sl, dv, zr);
        double e = kv_test_relerr(z, zr, dv);
        worst = e > worst ? e : worst;
    }
    return worst;
}

/* a strictly increasing list of query prefixes in [1, n] ending at n */
static int prefixes(int64_t *p, int max, int64_t n, kv_rng *r)
{
    int k = 0;
    int64_t cur = 0;
    while (k < max - 1) {
        cur += 1 + (int64_t)kv_rng_below(r, (uint64_t)(2 * n / max));
        if (cur >= n) break;
        p[k++] = cur;
    }
    p[k++] = n;
    return k;
}

/* ---- tests ---- */

/* window and sinks equal exact attention over their token sets, for any
 * rank count, chunk length and block sizes; memory is what they hold */
static void test_window_sinks(void)
{
    data x;
    data_gen(&x, 3000, 16, 8, 11, 1.0, 0.5);
    kv_method_ctx ctx = make_ctx(&x);
    size_t tok = (size_t)(x.d + x.dv) * sizeof(float);
    double st[NQ * 11], ref[NQ * 11], full[NQ * 11];
    float Q[NQ * 16];
    const int64_t Ws[] = { 1, 7, 64, 500, 3000, 5000 };
    const int64_t Cs[] = { 1, 16, 100, 4096 };
    for (int P = 1; P <= MAXP; P++)
        for (size_t ci = 0; ci < sizeof Cs / sizeof *Cs; ci++)
            for (size_t wi = 0; wi < sizeof Ws / sizeof *Ws; wi++) {
                int64_t W = Ws[wi], C = Cs[ci];
                char spec[64], spec2[64];
                snprintf(spec, sizeof spec, "window:W=%lld", (long long)W);
                int64_t S = (int64_t)(wi * 37 % 130); /* 0 .. 129 sinks */
                snprintf(spec2, sizeof spec2, "sinks:S=%lld,W=%lld", (long long)S, (long long)W);
                emu e, es;
                kv_err err = { 0 };
                CHECK(emu_open(&e, spec, &ctx, P, C, &err) == KV_OK, "%s", err.msg);
                CHECK(emu_open(&es, spec2, &ctx, P, C, &err) == KV_OK, "%s", err.msg);
                if (!e.ops || !es.ops) return;
                kv_rng r;
                kv_rng_seed(&r, 3, (uint64_t)P, (uint64_t)(W + C));
                int64_t ps[40];
                int np = prefixes(ps, 40, x.n, &r);
                double worst = 0, worst_s = 0, worst_full = 0;
                for (int i = 0; i < np; i++) {
                    int64_t p = ps[i];
                    gen_queries(Q, NQ, x.d, &r, 1.5);
                    emu_query(&e, x.K, x.V, Q, NQ, p, st);
                    clear_all(ref, NQ, x.dv);
                    ref_fold(&x, Q, NQ, p - W, p, ref);
                    double er = max_relerr(st, ref, NQ, x.dv);
                    worst = er > worst ? er : worst;
                    if (W >= x.n) { /* the whole prefix: exact attention */
                        clear_all(full, NQ, x.dv);
                        ref_fold(&x, Q, NQ, 0, p, full);
                        er = max_relerr(st, full, NQ, x.dv);
                        worst_full = er > worst_full ? er : worst_full;
                    }
                    emu_query(&es, x.K, x.V, Q, NQ, p, st);
                    clear_all(ref, NQ, x.dv);
                    int64_t s_end = S < p ? S : p, w_lo = p - W > S ? p - W : S;
                    ref_fold(&x, Q, NQ, 0, s_end, ref);
                    ref_fold(&x, Q, NQ, w_lo, p, ref);
                    er = max_relerr(st, ref, NQ, x.dv);
                    worst_s = er > worst_s ? er : worst_s;
                }
                CHECK(worst < 1e-5, "%s P=%d C=%lld: window vs last-W reference rel err %.3g", spec, P,
                      (long long)C, worst);
                CHECK(worst_full < 1e-5, "%s P=%d C=%lld: W >= n vs exact rel err %.3g", spec, P, (long long)C,
                      worst_full);
                CHECK(worst_s < 1e-5, "%s P=%d C=%lld: sinks vs reference rel err %.3g", spec2, P, (long long)C,
                      worst_s);
                /* memory: after the horizon the ranks together hold exactly
                 * the last min(W, n) tokens, in 16-token pages (at most two
                 * part-filled per rank) of (tok + 8)-byte rows, plus page
                 * tables of at most 2 (pages + 2) slots of 24 bytes */
                int64_t keep = W < x.n ? W : x.n, kept = emu_kept(&e);
                size_t b = emu_bytes(&e), row = tok + 8;
                CHECK(kept == keep, "%s P=%d C=%lld: holds %lld tokens, want %lld", spec, P, (long long)C,
                      (long long)kept, (long long)keep);
                size_t hi = (size_t)(kept + 30 * P) * row + (size_t)P * (2 * ((size_t)kept / 16 + 3) + 4) * 24;
                CHECK(b >= (size_t)kept * row && b <= hi, "%s P=%d: %zu bytes for %lld tokens (want %zu..%zu)", spec, P, b,
                      (long long)kept, (size_t)kept * row, hi);
                int64_t skeep = (S < x.n ? S : x.n) + (W < x.n - S ? W : (x.n - S > 0 ? x.n - S : 0));
                if (P == 1)
                    CHECK(emu_kept(&es) == skeep, "%s P=1: holds %lld tokens, want %lld", spec2,
                          (long long)emu_kept(&es), (long long)skeep);
                emu_close(&e);
                emu_close(&es);
            }
    data_free(&x);
}

/* unmasked-window equals the exact window-unmasked reference (computed
 * directly and by method_exact under the same semantics) with memory flat
 * in n */
static void test_unmasked_window(void)
{
    const int d = 16, dv = 8;
    double st[NQ * 11], ref[NQ * 11], ex[NQ * 11];
    float Q[NQ * 16];
    const int64_t Ws[] = { 32, 256 };
    double worst_all = 0, worst_all_ex = 0;
    for (size_t wi = 0; wi < 2; wi++)
        for (int P = 1; P <= MAXP; P++) {
            int64_t W = Ws[wi], C = P == 1 ? 4096 : 24;
            size_t bytes_first = 0, bytes_max = 0, exact_first = 0, exact_last = 0;
            for (int lg = 10; lg <= 14; lg++) {
                data x;
                data_gen(&x, (int64_t)1 << lg, d, dv, 100 + (uint64_t)lg, 1.0, 0.3);
                kv_method_ctx ctx = make_ctx(&x);
                ctx.semantics = KV_SEM_WINDOW_UNMASKED;
                ctx.window = W;
                emu e, eex;
                kv_err err = { 0 };
                CHECK(emu_open(&e, wi ? "unmasked-window" : "unmasked-window:W=32", &ctx, P, C, &err) == KV_OK,
                      "%s", err.msg);
                CHECK(emu_open(&eex, "exact", &ctx, P, C, &err) == KV_OK, "%s", err.msg);
                if (!e.ops || !eex.ops) return;
                kv_rng r;
                kv_rng_seed(&r, 5, (uint64_t)P, (uint64_t)lg);
                int64_t ps[24];
                int np = prefixes(ps, 24, x.n, &r);
                double worst = 0, worst_ex = 0;
                for (int i = 0; i < np; i++) {
                    gen_queries(Q, NQ, d, &r, 1.5);
                    emu_query(&e, x.K, x.V, Q, NQ, ps[i], st);
                    emu_query(&eex, x.K, x.V, Q, NQ, ps[i], ex);
                    ref_unmasked(&x, Q, NQ, ps[i], W, ref);
                    double er = max_relerr(st, ref, NQ, dv);
                    worst = er > worst ? er : worst;
                    er = max_relerr(st, ex, NQ, dv);
                    worst_ex = er > worst_ex ? er : worst_ex;
                }
                worst_all = worst > worst_all ? worst : worst_all;
                worst_all_ex = worst_ex > worst_all_ex ? worst_ex : worst_all_ex;
                /* the exact kernel sums float tiles: rounding ~1e-6 */
                CHECK(worst < 2e-6, "unmasked-window W=%lld P=%d n=2^%d: rel err %.3g vs reference", (long long)W, P,
                      lg, worst);
                CHECK(worst_ex < 2e-6, "unmasked-window W=%lld P=%d n=2^%d: rel err %.3g vs exact", (long long)W,
                      P, lg, worst_ex);
                size_t b = emu_bytes(&e);
                if (lg == 10) { bytes_first = b; exact_first = emu_bytes(&eex); }
                exact_last = emu_bytes(&eex);
                bytes_max = b > bytes_max ? b : bytes_max;
                /* flat in n: the held pages (16 rows each) vary by at most one with alignment */
                size_t page = 16 * (size_t)((d + dv) * 4 + 8);
                if (P == 1)
                    CHECK(b <= bytes_first + page && b + page >= bytes_first,
                          "unmasked-window P=1 n=2^%d: %zu bytes, at n=2^10 %zu", lg, b, bytes_first);
                emu_close(&e);
                emu_close(&eex);
                data_free(&x);
            }
            /* at most W held tokens per rank in 16-row pages (two part-filled),
             * the page table (at most 2 (pages + 3) + 4 slots of 24 bytes), the sum and count */
            size_t bound = (size_t)P * ((size_t)(W + 32) * ((d + dv) * 4 + 8) + (2 * ((size_t)W / 16 + 3) + 4) * 24 +
                                        (size_t)dv * 8 + 8);
            CHECK(bytes_max <= bound, "unmasked-window W=%lld P=%d: %zu bytes > %zu", (long long)W, P, bytes_max,
                  bound);
            CHECK(exact_last >= 8 * exact_first, "exact memory should grow with n (%zu -> %zu)", exact_first,
                  exact_last);            printf("  unmasked-window W=%lld P=%d: %zu bytes at n=2^10, max %zu up to 2^14 (exact: %zu -> %zu)\n",
                   (long long)W, P, bytes_first, bytes_max, exact_first, exact_last);
        }
    printf("  unmasked-window: worst rel err %.3g vs double reference, %.3g vs method exact\n", worst_all,
           worst_all_ex);
}

/* mean relative error vs full exact attention of one method over a stream
 * with NQ queries every `every` tokens (H2O's scores come from them), scored
 * from p = 1024 on.  Queries are N(0, 1.5^2), plus alpha*u if u is given. */
static double mean_err(const data *x, const char *spec, int P, int64_t C, int64_t every, const float *u,
                       double alpha, int64_t *kept, size_t *bytes)
{
    kv_method_ctx ctx = make_ctx(x);
    emu e;
    kv_err err = { 0 };
    if (emu_open(&e, spec, &ctx, P, C, &err)) {
        CHECK(0, "%s", err.msg);
        return INFINITY;
    }
    kv_rng r;
    kv_rng_seed(&r, 9, 0, 0);
    double st[NQ * 19], ref[NQ * 19], z[16], zr[16], sum = 0;
    float Q[NQ * 32];
    int cnt = 0;
    for (int64_t p = every; p <= x->n; p += every) {
        gen_queries(Q, NQ, x->d, &r, 1.5);
        for (int i = 0; u && i < NQ * x->d; i++) Q[i] += (float)(alpha * u[i % x->d]);
        emu_query(&e, x->K, x->V, Q, NQ, p, st);
        clear_all(ref, NQ, x->dv);
        ref_fold(x, Q, NQ, 0, p, ref);
        if (p < 1024) continue;
        for (int q = 0; q < NQ; q++) {
            kv_partial_output(st + q * KV_PSTATE_LEN(x->dv), x->dv, z);
            kv_partial_output(ref + q * KV_PSTATE_LEN(x->dv), x->dv, zr);
            double num = 0, den = 0;
            for (int c = 0; c < x->dv; c++) {
                num += (z[c] - zr[c]) * (z[c] - zr[c]);
                den += zr[c] * zr[c];
            }
            sum += sqrt(num / den);
            cnt++;
        }
    }
    if (kept) *kept = emu_kept(&e);
    if (bytes) *bytes = emu_bytes(&e);
    emu_close(&e);
    return sum / cnt;
}

static void test_error_falls(void)
{
    data x;
    data_gen(&x, 4096, 32, 16, 21, 1.0, 0.5);
    const char *fmt[] = { "window:W=%lld", "sinks:S=4,W=%lld", "h2o:tokens=%lld", "uniform:tokens=%lld",
                          "topk:k=%lld" };
    const int64_t B[] = { 32, 128, 512, 2048, 16384 };
    const int nb = 5;
    for (int P = 1; P <= 3; P += 2)
        for (int f = 0; f < 5; f++) {
            double err[5];
            for (int b = 0; b < nb; b++) {
                char spec[64];
                snprintf(spec, sizeof spec, fmt[f], (long long)B[b]);
                int64_t kept;
                size_t bytes;
                err[b] = mean_err(&x, spec, P, 64, 256, NULL, 0, &kept, &bytes);
                printf("  P=%d %-22s mean rel err %.4g  kept %lld  bytes %zu\n", P, spec, err[b], (long long)kept,
                       bytes);
                if (f == 2 || f == 3) /* budget-style: ceil(budget/P) per rank */
                    CHECK(kept <= P * ((B[b] + P - 1) / P), "%s P=%d keeps %lld tokens", spec, P, (long long)kept);
                if (b > 0) /* strictly falls, unless already exact */
                    CHECK(err[b] < err[b - 1] || (err[b] < 1e-6 && err[b - 1] < 1e-6),
                          "%s P=%d: error %.4g not below %.4g at the smaller budget", spec, P, err[b], err[b - 1]);
            }
            /* the largest budget covers the stream: exact up to rounding */
            CHECK(err[nb - 1] < 1e-5, "%s P=%d: error %.3g at budget %lld >= n", fmt[f], P, err[nb - 1],
                  (long long)B[nb - 1]);
        }
    data_free(&x);
}

/* H2O by brute force, one instance per emulated rank: held tokens in a
 * plain list, eviction by a linear scan.  The method must match it. */
typedef struct {
    int64_t B, R, n;
    int64_t *idx;  /* global index, ascending */
    double *score;
} h2o_ref;

static void h2o_ref_ingest(h2o_ref *h, int64_t g)
{
    h->idx[h->n] = g;
    h->score[h->n++] = 0;
    if (h->n <= h->B) return;
    int64_t worst = -1; /* lowest (score, index) among all but the newest R */
    for (int64_t i = 0; i < h->n - h->R; i++)
        if (worst < 0 || h->score[i] < h->score[worst]) worst = i; /* ties: the older (smaller i) */
    memmove(h->idx + worst, h->idx + worst + 1, sizeof(int64_t) * (size_t)(h->n - worst - 1));
    memmove(h->score + worst, h->score + worst + 1, sizeof(double) * (size_t)(h->n - worst - 1));
    h->n--;
}

static void h2o_ref_partial(h2o_ref *h, const data *x, const float *Q, int nq, double *st)
{
    size_t sl = KV_PSTATE_LEN(x->dv);
    float scale = (float)(1.0 / sqrt((double)x->d));
    double *inc = calloc((size_t)h->n + 1, sizeof(double)), *a = malloc(sizeof(double) * ((size_t)h->n + 1));
    for (int q = 0; q < nq; q++) {
        double *o = st + q * sl, m = -INFINITY, l = 0;
        kv_partial_clear(o, x->dv);
        for (int64_t i = 0; i < h->n; i++) {
            float dot = 0;
            for (int c = 0; c < x->d; c++) dot += Q[q * x->d + c] * x->K[h->idx[i] * x->d + c];
            a[i] = (double)(dot * scale);
            m = a[i] > m ? a[i] : m;
        }
        for (int64_t i = 0; i < h->n; i++) {
            kv_partial_add_one(o, x->dv, a[i], 1.0, x->V + h->idx[i] * x->dv);
            l += exp(a[i] - m);
        }
        for (int64_t i = 0; i < h->n; i++) inc[i] += exp(a[i] - m) / l;
    }
    for (int64_t i = 0; i < h->n; i++) h->score[i] += inc[i];
    free(inc);
    free(a);
}

/* heap-based H2O == brute force at P = 1, several chunk lengths and recent
 * sizes (including 0 and == budget).  With P > 1 the budget is global and
 * shared by what each rank has seen, scores normalised by the global
 * softmax: tests/test_global_methods.c checks that rule. */
static void test_h2o_vs_bruteforce(void)
{
    data x;
    data_gen(&x, 1500, 8, 4, 71, 1.0, 0.5);
    kv_method_ctx ctx = make_ctx(&x);
    size_t sl = KV_PSTATE_LEN(x.dv);
    const int64_t rec[] = { 0, 5, 20, 40 };
    for (int P = 1; P <= 1; P++)
        for (int64_t C = 4; C <= 256; C *= 4)
            for (int ri = 0; ri < 4; ri++) {
                char spec[64];
                snprintf(spec, sizeof spec, "h2o:tokens=40,recent=%lld", (long long)rec[ri]);
                emu e;
                kv_err err = { 0 };
                CHECK(emu_open(&e, spec, &ctx, P, C, &err) == KV_OK, "%s", err.msg);
                if (!e.ops) return;
                h2o_ref h[MAXP];
                for (int r = 0; r < P; r++) {
                    h[r].B = (40 + P - 1) / P;
                    h[r].R = (rec[ri] + P - 1) / P;
                    h[r].n = 0;
                    h[r].idx = malloc(sizeof(int64_t) * (size_t)(h[r].B + 1));
                    h[r].score = malloc(sizeof(double) * (size_t)(h[r].B + 1));
                }
                kv_rng r;
                kv_rng_seed(&r, 13, (uint64_t)P, (uint64_t)C);
                float Q[NQ * 8];
                double st[NQ * 7], rs[NQ * 7], tmp[NQ * 7], worst = 0;
                int64_t fed = 0;
                for (int64_t p = 7; p <= x.n; p += 7 + (int64_t)kv_rng_below(&r, 20)) {
                    gen_queries(Q, NQ, x.d, &r, 2.0);
                    emu_query(&e, x.K, x.V, Q, NQ, p, st);
                    for (; fed < p; fed++) h2o_ref_ingest(&h[(fed / C) % P], fed);
                    clear_all(rs, NQ, x.dv);
                    for (int k = 0; k < P; k++) {
                        h2o_ref_partial(&h[k], &x, Q, NQ, tmp);
                        for (int q = 0; q < NQ; q++) kv_partial_merge(rs + q * sl, tmp + q * sl, x.dv);
                    }
                    double er = max_relerr(st, rs, NQ, x.dv);
                    worst = er > worst ? er : worst;
                }
                CHECK(worst < 1e-5, "%s P=%d C=%lld: differs from brute-force H2O by %.3g", spec, P, (long long)C,
                      worst);
                int64_t held = 0;
                for (int k = 0; k < P; k++) held += h[k].n;
                CHECK(emu_kept(&e) == held, "%s P=%d: holds %lld, brute force %lld", spec, P,
                      (long long)emu_kept(&e), (long long)held);
                for (int k = 0; k < P; k++) { free(h[k].idx); free(h[k].score); }
                emu_close(&e);
            }
    data_free(&x);
}

/* Heavy hitters: 24 tokens whose keys share a direction u with every query
 * carry much of the attention.  With a query every 16 tokens (each token is
 * scored while it is recent) H2O's scores must find and keep them, so at
 * equal budget it beats a window and a uniform sample. */
static void test_h2o_heavy(void)
{
    data x;
    data_gen(&x, 4096, 32, 16, 61, 1.0, 0.5);
    kv_rng r;
    kv_rng_seed(&r, 12, 0, 0);
    float u[32];
    double nu = 0;
    for (int c = 0; c < 32; c++) { u[c] = (float)kv_rng_normal(&r); nu += u[c] * u[c]; }
    for (int c = 0; c < 32; c++) u[c] = (float)(u[c] / sqrt(nu));
    for (int h = 0; h < 24; h++) { /* heavy tokens spread over the stream */
        int64_t i = 100 + (int64_t)kv_rng_below(&r, 3900);
        for (int c = 0; c < 32; c++) x.K[i * 32 + c] += 12.0f * u[c];
    }
    const int64_t budget = 128;
    char hs[64], ws[64], us[64];
    snprintf(hs, sizeof hs, "h2o:tokens=%lld", (long long)budget);
    snprintf(ws, sizeof ws, "window:W=%lld", (long long)budget);
    snprintf(us, sizeof us, "uniform:tokens=%lld", (long long)budget);
    for (int P = 1; P <= MAXP; P++) {
        double eh = mean_err(&x, hs, P, 16, 16, u, 3.0, NULL, NULL);
        double ew = mean_err(&x, ws, P, 16, 16, u, 3.0, NULL, NULL);
        double eu = mean_err(&x, us, P, 16, 16, u, 3.0, NULL, NULL);
        double best = ew < eu ? ew : eu;
        printf("  heavy hitters P=%d: h2o %.4g  window %.4g  uniform %.4g\n", P, eh, ew, eu);
        /* sharded H2O splits budget and recent, so it finds fewer of them */
        CHECK(eh < (P == 1 ? 0.5 : 0.75) * best, "h2o P=%d should beat window/uniform on heavy hitters: %.4g %.4g %.4g",
              P, eh, ew, eu);
    }
    data_free(&x);
}

/* H2O: answers do not depend on the order of queries within a call;
 * recent == budget is the window; budget >= n is exact */
static void test_h2o(void)
{
    data x;
    data_gen(&x, 2000, 16, 8, 31, 1.0, 0.5);
    kv_method_ctx ctx = make_ctx(&x);
    size_t sl = KV_PSTATE_LEN(x.dv);
    emu a, b, w, h;
    kv_err err = { 0 };
    CHECK(emu_open(&a, "h2o:tokens=100,recent=20", &ctx, 1, 1, &err) == KV_OK, "%s", err.msg);
    CHECK(emu_open(&b, "h2o:tokens=100,recent=20", &ctx, 1, 1, &err) == KV_OK, "%s", err.msg);
    CHECK(emu_open(&w, "window:W=64", &ctx, 1, 1, &err) == KV_OK, "%s", err.msg);
    CHECK(emu_open(&h, "h2o:tokens=64,recent=64", &ctx, 1, 1, &err) == KV_OK, "%s", err.msg);
    if (!a.ops || !b.ops || !w.ops || !h.ops) return;
    kv_rng r;
    kv_rng_seed(&r, 4, 0, 0);
    float Q[8 * 16], Qr[8 * 16];
    double sa[8 * 11], sb[8 * 11], s1[8 * 11], s2[8 * 11];
    double worst_order = 0, worst_win = 0;
    for (int64_t p = 50; p <= x.n; p += 50) {
        gen_queries(Q, 8, x.d, &r, 2.0);
        for (int q = 0; q < 8; q++) memcpy(Qr + q * x.d, Q + (7 - q) * x.d, sizeof(float) * (size_t)x.d);
        emu_query(&a, x.K, x.V, Q, 8, p, sa);
        emu_query(&b, x.K, x.V, Qr, 8, p, sb);
        for (int q = 0; q < 8; q++) {
            double e = max_relerr(sa + q * sl, sb + (7 - q) * sl, 1, x.dv);
            worst_order = e > worst_order ? e : worst_order;
        }
        emu_query(&w, x.K, x.V, Q, 8, p, s1);
        emu_query(&h, x.K, x.V, Q, 8, p, s2);
        double e = max_relerr(s2, s1, 8, x.dv);
        worst_win = e > worst_win ? e : worst_win;
    }
    CHECK(worst_order < 1e-9, "h2o: reversed query order changes answers by %.3g", worst_order);
    CHECK(worst_win < 1e-5, "h2o recent=budget=64 differs from window:W=64 by %.3g", worst_win);
    CHECK(emu_kept(&a) == 100, "h2o: holds %lld tokens, want 100", (long long)emu_kept(&a));
    size_t per = (size_t)(x.d + x.dv) * 4;
    CHECK(emu_bytes(&a) >= 100 * per && emu_bytes(&a) <= 100 * (per + 32), "h2o: %zu bytes for 100 tokens",
          emu_bytes(&a));
    /* recent=0: pure heavy hitters still answers and stays in budget */
    for (int P = 1; P <= MAXP; P++) {
        emu z;
        CHECK(emu_open(&z, "h2o:tokens=50,recent=0", &ctx, P, 16, &err) == KV_OK, "%s", err.msg);
        if (!z.ops) break;
        for (int64_t p = 100; p <= x.n; p += 100) {
            gen_queries(Q, 8, x.d, &r, 2.0);
            emu_query(&z, x.K, x.V, Q, 8, p, sa);
            double zz[8];
            CHECK(kv_partial_output(sa, x.dv, zz) == 0, "h2o recent=0: empty answer");
        }
        CHECK(emu_kept(&z) <= P * ((50 + P - 1) / P), "h2o recent=0 P=%d holds %lld", P, (long long)emu_kept(&z));
        emu_close(&z);
    }
    emu_close(&a);
    emu_close(&b);
    emu_close(&w);
    emu_close(&h);
    data_free(&x);
}

/* uniform: deterministic per seed, seed matters, the same sample of k
 * tokens at every P (bottom-k priorities of the global index), budget >= n
 * is exact */
static void test_uniform(void)
{
    data x;
    data_gen(&x, 1500, 16, 8, 41, 1.0, 0.5);
    kv_method_ctx ctx = make_ctx(&x);
    float Q[NQ * 16];
    double s1[NQ * 11], s2[NQ * 11], s3[NQ * 11], ref[NQ * 11], p1[NQ * 11];
    kv_rng r;
    kv_rng_seed(&r, 6, 0, 0);
    gen_queries(Q, NQ, x.d, &r, 1.5);
    for (int P = 1; P <= MAXP; P++) {
        emu a, b, c, full;
        kv_err err = { 0 };
        CHECK(emu_open(&a, "uniform:tokens=200", &ctx, P, 10, &err) == KV_OK, "%s", err.msg);
        CHECK(emu_open(&b, "uniform:tokens=200", &ctx, P, 10, &err) == KV_OK, "%s", err.msg);
        CHECK(emu_open(&c, "uniform:tokens=200,seed=7", &ctx, P, 10, &err) == KV_OK, "%s", err.msg);
        CHECK(emu_open(&full, "uniform:tokens=6000", &ctx, P, 10, &err) == KV_OK, "%s", err.msg);
        if (!a.ops || !b.ops || !c.ops || !full.ops) return;
        emu_query(&a, x.K, x.V, Q, NQ, x.n, s1);
        emu_query(&b, x.K, x.V, Q, NQ, x.n, s2);
        emu_query(&c, x.K, x.V, Q, NQ, x.n, s3);
        CHECK(memcmp(s1, s2, sizeof s1) == 0, "uniform P=%d: same seed, different answers", P);
        CHECK(memcmp(s1, s3, sizeof s1) != 0, "uniform P=%d: seed=7 gives the same sample", P);
        /* the ranks together hold exactly the k sampled tokens */
        CHECK(emu_kept(&a) == 200, "uniform P=%d holds %lld, want 200", P, (long long)emu_kept(&a));
        /* rows of (16 + 8) floats + priority + index in 16-row pages (at most
         * one part-filled page per rank), plus each rank's 200-entry heap */
        size_t row = 96 + 16, lo = (size_t)emu_kept(&a) * row + (size_t)P * 200 * 8;
        size_t hi = lo + (size_t)P * (15 * row + 64 * 24 + 16);
        CHECK(emu_bytes(&a) >= lo && emu_bytes(&a) <= hi, "uniform P=%d: %zu bytes for %lld tokens (want %zu..%zu)", P,
              emu_bytes(&a), (long long)emu_kept(&a), lo, hi);
        /* the same sample at every P: only the fold's grouping (16-token
         * pages, merged per rank) differs, float tiles of <= 16 terms */
        if (P == 1) memcpy(p1, s1, sizeof p1);
        CHECK(max_relerr(s1, p1, NQ, x.dv) < 1e-5, "uniform P=%d differs from P=1: rel err %.3g", P,
              max_relerr(s1, p1, NQ, x.dv));
        emu_query(&full, x.K, x.V, Q, NQ, x.n, s1);
        clear_all(ref, NQ, x.dv);
        ref_fold(&x, Q, NQ, 0, x.n, ref);
        CHECK(max_relerr(s1, ref, NQ, x.dv) < 1e-5, "uniform P=%d budget >= n: rel err %.3g", P,
              max_relerr(s1, ref, NQ, x.dv));
        emu_close(&a);
        emu_close(&b);
        emu_close(&c);
        emu_close(&full);
    }
    data_free(&x);
}

/* Reference for topk at prefix p: the top-k state of float logits a_t
 * (ties to the older token) and the log of its mass log sum_{R} e^{a_t}.
 *
 * The method computes its own float logits a'_t (src/methods/topk/topk.c: an omp
 * simd reduction, reassociated and FMA-contracted as -march allows), so a'
 * and a differ by rounding.  Float arithmetic bounds it: a dot product of d
 * float terms in ANY order, with or without FMA, is within
 * gamma_d * sum_c |q_c k_c| (gamma_d = d u / (1 - d u), u = 2^-24) of the
 * exact one, and the scale multiply adds u |a| / (1 - u); both logits use the
 * same float scale.  So each is within e_t = gamma_d s S1_t + u |a_t| / (1-u)
 * of the exact s <q, k_t>, and |a'_t - a_t| <= 2 e_t (triangle inequality:
 * the 2 is the two independent evaluations, not slack; the gamma_d bound
 * itself is worst case, ~sqrt(d) above the typical error).  S1_t is summed in
 * double from exact float products (relative error ~1e-15, negligible).
 *
 * *dlt = delta = max over the prefix of 2 e_t.  *relb = bound on the
 * max_relerr of the method's output against this state when the method
 * holds the same set (one rank): w'_t / w_t is in [e^-2delta, e^2delta] and
 * sum_t (w'_t - w_t) = 0, so |z'_c - z_c| = |sum_t (w'_t - w_t)(v_tc - z_c)|
 * <= (e^{2 delta} - 1) sum_{t in R} w_t |v_tc - z_c|; plus the double sums of both
 * sides (<= 4 (k + 2) DBL_EPSILON max|v|).  *relb = -1 when a'-rounding can
 * change the set: the k-th and (k+1)-th logits closer than 2 delta. */
static double topk_ref(const data *x, const float *q, int64_t p, int64_t k, double *st, double *dlt, double *relb)
{
    const double u = 0x1p-24, gam = x->d * u / (1 - x->d * u);
    float scale = (float)(1.0 / sqrt((double)x->d));
    float *a = malloc(sizeof(float) * (size_t)p), *s = malloc(sizeof(float) * (size_t)p);
    double e_max = 0;
    for (int64_t t = 0; t < p; t++) {
        float dot = 0;
        double s1 = 0;
        for (int c = 0; c < x->d; c++) {
            dot += q[c] * x->K[t * x->d + c];
            s1 += fabs((double)q[c] * x->K[t * x->d + c]);
        }
        a[t] = s[t] = dot * scale;
        double e = gam * scale * s1 + u * fabs(a[t]) / (1 - u);
        e_max = e > e_max ? e : e_max;
    }
    double delta = 2 * e_max;
    /* threshold by insertion into a sorted copy (small n in tests) */
    for (int64_t i = 1; i < p; i++)
        for (int64_t j = i; j > 0 && s[j] > s[j - 1]; j--) { float t = s[j]; s[j] = s[j - 1]; s[j - 1] = t; }
    int64_t kk = k < p ? k : p;
    float thr = s[kk - 1];
    int ambiguous = kk < p && (double)s[kk - 1] - s[kk] <= 2 * delta;
    int64_t above = 0;
    for (int64_t t = 0; t < p; t++) above += a[t] > thr;
    int64_t ties = kk - above;
    kv_partial_clear(st, x->dv);
    char *in = calloc((size_t)p, 1);
    for (int64_t t = 0; t < p; t++) {
        if (a[t] < thr || (a[t] == thr && ties == 0)) continue;
        if (a[t] == thr) ties--;
        in[t] = 1;
        kv_partial_add_one(st, x->dv, a[t], 1.0, x->V + t * x->dv);
    }
    double z[64], dev[64] = { 0 }, zmax = 0, devmax = 0, vmax = 0;
    kv_partial_output(st, x->dv, z);
    for (int64_t t = 0; t < p; t++) {
        double w = in[t] ? exp(a[t] - st[KV_PS_M]) / st[KV_PS_L] : 0; /* softmax weight over R */
        for (int c = 0; in[t] && c < x->dv; c++) {
            double v = x->V[t * x->dv + c];
            dev[c] += w * fabs(v - z[c]);
            vmax = fabs(v) > vmax ? fabs(v) : vmax;
        }
    }
    for (int c = 0; c < x->dv; c++) {
        zmax = fabs(z[c]) > zmax ? fabs(z[c]) : zmax;
        devmax = dev[c] > devmax ? dev[c] : devmax;
    }
    *dlt = delta;
    *relb = ambiguous ? -1
                      : (expm1(2 * delta) * devmax + 4.0 * (double)(kk + 2) * DBL_EPSILON * vmax) /
                            (zmax > 1e-300 ? zmax : 1e-300); /* as kv_test_relerr */
    free(in);
    free(a);
    free(s);
    return log(st[KV_PS_L]) + st[KV_PS_M];
}

/* topk: with one rank exactly the top-k reference (up to logit rounding);
 * with P ranks the union of per-rank top-k, so it captures at least the
 * global top-k mass.  With C the captured set, R the reference top-k set:
 * sum_C e^{a'} >= (top-k sum under a') >= sum_R e^{a'} >= e^{-delta} sum_R e^{a},
 * so log(captured) >= log(ref mass) - delta (delta: topk_ref).  The log-masses
 * themselves are double sums of <= p exps with rescalings, plus a log: each
 * within ~(2p + 2 + |lm|) 2^-53, so 4 (p + 2 + |lm|) DBL_EPSILON covers both. */
static void test_topk(void)
{
    data x;
    data_gen(&x, 1200, 16, 8, 51, 1.0, 0.5);
    kv_method_ctx ctx = make_ctx(&x);
    size_t sl = KV_PSTATE_LEN(x.dv);
    kv_rng r;
    kv_rng_seed(&r, 8, 0, 0);
    const int64_t ks[] = { 1, 10, 100, 2000 };
    for (int P = 1; P <= MAXP; P++)
        for (int ki = 0; ki < 4; ki++) {
            char spec[32];
            snprintf(spec, sizeof spec, "topk:k=%lld", (long long)ks[ki]);
            emu e;
            kv_err err = { 0 };
            CHECK(emu_open(&e, spec, &ctx, P, 50, &err) == KV_OK, "%s", err.msg);
            if (!e.ops) return;
            float Q[NQ * 16];
            double st[NQ * 11], ref[11];
            /* at the query with the largest excess over its bound: value, bound */
            double worst = 0, worst_b = 0, over = -INFINITY, worst_mass = -INFINITY, mass_b = 0, over_mass = -INFINITY;
            double ratio = 0, ratio_mass = -INFINITY, gap_max = -INFINITY;
            int skipped = 0;
            for (int64_t p = 150; p <= x.n; p += 150) {
                gen_queries(Q, NQ, x.d, &r, 2.0);
                emu_query(&e, x.K, x.V, Q, NQ, p, st);
                for (int q = 0; q < NQ; q++) {
                    double delta, relb;
                    double lm = topk_ref(&x, Q + q * x.d, p, ks[ki], ref, &delta, &relb);
                    double *s = st + q * sl;
                    if (P == 1 && relb < 0) skipped++; /* a near-tie at the k-th logit: either set is right */
                    else if (P == 1) {
                        double er = max_relerr(s, ref, 1, x.dv);
                        if (er - relb > over) { over = er - relb; worst = er; worst_b = relb; }
                        ratio = er / relb > ratio ? er / relb : ratio;
                    }
                    /* the union of per-rank top-k holds at least the global top-k mass */
                    double gap = lm - (log(s[KV_PS_L]) + s[KV_PS_M]);
                    double bound = delta + 4.0 * ((double)p + 2 + fabs(lm)) * DBL_EPSILON;
                    if (gap - bound > over_mass) { over_mass = gap - bound; worst_mass = gap; mass_b = bound; }
                    ratio_mass = gap / bound > ratio_mass ? gap / bound : ratio_mass;
                    gap_max = gap > gap_max ? gap : gap_max;
                }
            }
            if (P == 1)
                CHECK(over <= 0, "%s P=1: rel err %.3g vs top-k reference, rounding bound %.3g", spec, worst, worst_b);
            CHECK(over_mass <= 0, "%s P=%d: captured mass below the global top-k by %.3g (log), rounding bound %.3g",
                  spec, P, worst_mass, mass_b);
            printf("  %s P=%d: log mass gap max %.3g, max gap/bound %.3g", spec, P, gap_max, ratio_mass);
            if (P == 1) printf("; rel err / bound max %.3g (%d near-tie queries not compared)", ratio, skipped);
            printf("\n");
            /* every token's row (allocated for the shard) plus a run table (16 bytes an entry, capacity >= 16) */
            CHECK(emu_bytes(&e) >= (size_t)x.n * (size_t)(x.d + x.dv) * 4 &&
                      emu_bytes(&e) <= (size_t)x.n * (size_t)(x.d + x.dv) * 4 + (size_t)P * 16 * (2 * (size_t)x.n / 50 + 16),
                  "%s: %zu bytes", spec, emu_bytes(&e));
            emu_close(&e);
        }
    data_free(&x);
}

/* window+subgen: with SubGen in its exact regime (delta = 0, t and s >= n on
 * distinct keys) and with W >= n it is exact attention for any rank count;
 * with a small SubGen it beats the window alone, which drops the old mass */
static void test_window_subgen(void)
{
    CHECK(kv_method_find("subgen") != NULL, "window+subgen needs the subgen method registered");
    if (!kv_method_find("subgen")) return;
    data x;
    data_gen(&x, 1500, 16, 8, 81, 1.0, 0.5);
    kv_method_ctx ctx = make_ctx(&x);
    size_t tok = (size_t)(x.d + x.dv) * sizeof(float);
    const char *specs[] = { "window+subgen:W=64,delta=0,t=100000,s=100000",
                            "window+subgen:W=2000,delta=1,t=4,s=4,seed=3" };
    for (int si = 0; si < 2; si++)
        for (int P = 1; P <= MAXP; P++)
            for (int64_t C = 16; C <= 400; C *= 25) {
                emu e;
                kv_err err = { 0 };
                CHECK(emu_open(&e, specs[si], &ctx, P, C, &err) == KV_OK, "%s", err.msg);
                if (!e.ops) return;
                kv_rng r;
                kv_rng_seed(&r, 15, (uint64_t)P, (uint64_t)C);
                int64_t ps[20];
                int np = prefixes(ps, 20, x.n, &r);
                float Q[NQ * 16];
                double st[NQ * 11], ref[NQ * 11], worst = 0;
                for (int i = 0; i < np; i++) {
                    gen_queries(Q, NQ, x.d, &r, 1.5);
                    emu_query(&e, x.K, x.V, Q, NQ, ps[i], st);
                    clear_all(ref, NQ, x.dv);
                    ref_fold(&x, Q, NQ, 0, ps[i], ref);
                    double er = max_relerr(st, ref, NQ, x.dv);
                    worst = er > worst ? er : worst;
                }
                CHECK(worst < 1e-5, "%s P=%d C=%lld: rel err %.3g vs exact", specs[si], P, (long long)C, worst);
                if (P == 1) /* the last W tokens held exactly, plus SubGen */
                    CHECK(emu_bytes(&e) >= (size_t)(si ? x.n : 64) * tok, "%s: %zu bytes", specs[si], emu_bytes(&e));
                emu_close(&e);
            }
    data_free(&x);
    /* at fixed W the error falls as SubGen's samples grow (delta = 100: one
     * cluster, so t and s >= the shard make it exact) */
    data_gen(&x, 4096, 32, 16, 21, 1.0, 0.5);
    const int64_t ts[] = { 16, 128, 1024, 8192 };
    for (int P = 1; P <= 3; P += 2) {
        double prev = INFINITY;
        for (int i = 0; i < 4; i++) {
            char spec[96];
            snprintf(spec, sizeof spec, "window+subgen:W=128,delta=100,t=%lld,s=%lld", (long long)ts[i],
                     (long long)ts[i]);
            int64_t kept;
            size_t bytes;
            double e = mean_err(&x, spec, P, 64, 256, NULL, 0, &kept, &bytes);
            printf("  P=%d %-44s mean rel err %.4g  bytes %zu\n", P, spec, e, bytes);
            CHECK(e < prev, "%s P=%d: error %.4g not below %.4g", spec, P, e, prev);
            if (i == 3) CHECK(e < 1e-5, "%s P=%d: error %.3g, want exact", spec, P, e);
            prev = e;
        }
    }
    data_free(&x);
}

/* bad parameter strings are KV_EINPUT, at parse or create time */
static int spec_rc(const char *text, const kv_method_ctx *ctx, kv_err *err)
{
    kv_spec *sp = NULL;
    int n = 0, rc = kv_spec_parse_list(text, &sp, &n, err);
    if (rc) return rc;
    const kv_method_ops *ops = kv_method_find(sp[0].method);
    if (!ops) rc = kv_seterr(err, KV_EINPUT, "unknown method");
    void *st = NULL;
    if (!rc) rc = ops->create(&sp[0], ctx, &st, err);
    if (st) ops->free(st);
    free(sp);
    return rc;
}

static void test_specs(void)
{
    kv_method_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.d = 8;
    ctx.dv = 4;
    ctx.scale = 0.35;
    ctx.nranks = 1;
    ctx.window = 16;
    const char *bad[] = {
        "window:W=-3", "window:W=0", "window:foo=1", "window:W=", "window:W=4,foo=2", "window:W=abc",
        "window:W=1.5", "sinks:S=-1,W=8", "sinks:S=4,W=0", "h2o:tokens=10,recent=20",
        "h2o:tokens=0", "h2o:tokens=10,recent=-1", "uniform:tokens=0",
        "uniform:tokens=8,seed=-1", "uniform:tokens=8,k=3", "topk:k=0", "topk:k=5,W=3",
        "unmasked-window:W=8", "unmasked-window", "unmasked-window:W=0",
    };
    const char *bad_wsg[] = { "window+subgen:W=0,delta=1,t=4,s=4", "window+subgen:W=8,delta=-1,t=4,s=4",
                              "window+subgen:W=8,delta=1,t=0,s=4",
                              "window+subgen:W=8,delta=1,t=4,s=4,foo=1", "window+subgen:W=8,delta=1,t=4,s=4,seed=-2" };
    for (size_t i = 0; kv_method_find("subgen") && i < sizeof bad_wsg / sizeof *bad_wsg; i++) {
        kv_err err = { 0 };
        ctx.semantics = KV_SEM_FULL;
        int rc = spec_rc(bad_wsg[i], &ctx, &err);
        CHECK(rc == KV_EINPUT && err.msg[0], "'%s' gave %d (%s)", bad_wsg[i], rc, err.msg);
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        kv_err err = { 0 };
        ctx.semantics = KV_SEM_FULL;
        int rc = spec_rc(bad[i], &ctx, &err);
        CHECK(rc == KV_EINPUT && err.msg[0], "'%s' gave %d (%s)", bad[i], rc, err.msg);
    }
    /* unmasked-window under its semantics: W must match --window */
    ctx.semantics = KV_SEM_WINDOW_UNMASKED;
    const char *bad_uw[] = { "unmasked-window:W=8", "unmasked-window:W=0", "unmasked-window:x=1" };
    for (size_t i = 0; i < 3; i++) {
        kv_err err = { 0 };
        int rc = spec_rc(bad_uw[i], &ctx, &err);
        CHECK(rc == KV_EINPUT && err.msg[0], "'%s' (window 16) gave %d (%s)", bad_uw[i], rc, err.msg);
    }
    kv_err err = { 0 };
    CHECK(spec_rc("unmasked-window", &ctx, &err) == KV_OK, "%s", err.msg);
    CHECK(spec_rc("unmasked-window:W=16", &ctx, &err) == KV_OK, "%s", err.msg);
    ctx.semantics = KV_SEM_FULL;
    kv_err e2 = { 0 };
    spec_rc("unmasked-window:W=16", &ctx, &e2);
    CHECK(strstr(e2.msg, "--semantics window-unmasked-values") != NULL, "message: %s", e2.msg);
    if (kv_method_find("subgen")) {
        kv_err e3 = { 0 };
        ctx.semantics = KV_SEM_WINDOW_UNMASKED;
        CHECK(spec_rc("window+subgen:W=8,delta=1,t=4,s=4", &ctx, &e3) == KV_EINPUT, "window+subgen under window "
              "semantics accepted");
        ctx.semantics = KV_SEM_FULL;
        CHECK(spec_rc("window+subgen:W=8,delta=0.5,t=4,s=4,seed=1,index=0", &ctx, &e3) == KV_OK, "%s", e3.msg);
    }
    const char *good[] = { "window:W=1", "sinks:S=0,W=1", "sinks:S=4,W=64,name=sk", "h2o:tokens=10",
                           "h2o:tokens=10,recent=10", "h2o:tokens=10,recent=0", "uniform:tokens=1,seed=0",
                           "topk:k=1", "window:W=9223372036854775807",
                           /* parameters with defaults (the methods' tables) */
                           "window", "sinks:S=4", "sinks:W=8", "h2o:recent=5", "h2o", "uniform", "topk",
                           "window+subgen:delta=1,t=4,s=4", "window+subgen:W=8,t=4,s=4",
                           "window+subgen:W=8,delta=1,t=4" };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        kv_err e = { 0 };
        CHECK(spec_rc(good[i], &ctx, &e) == KV_OK, "'%s': %s", good[i], e.msg);
    }
}

int main(void)
{
    test_specs();
    test_window_sinks();
    test_unmasked_window();
    test_h2o();
    test_h2o_vs_bruteforce();
    test_uniform();
    test_topk();
    test_error_falls();
    test_h2o_heavy();
    test_window_subgen();
    return kv_test_result("test_baselines");
}
