/* test_quest.c - quest (methods/quest/) against a brute-force Quest, at
 * P = 1..3 emulated ranks (emu.h: chunk-cyclic shards, select lists merged
 * over ranks, partial_select).
 *
 * The brute force: per query at prefix p, pages g = 0 .. (p - 1) / page of
 * the tokens < p, each page's bound scale sum_c max(q_c min_c, q_c max_c)
 * in double (channels in order, as quest sums them) rounded to float; the
 * newest page, then the rest by (bound, lower g first), the first `pages`
 * read; exact attention over their tokens in double.  Checked:
 *   - quest at every P equals it within 1e-9 relative (the logits are float
 *     dot products in both, so only the double sums' order differs), with
 *     random keys and with keys from 3 vectors (exact bound ties: the page
 *     index decides);
 *   - pages >= every page is exact attention;
 *   - the cost hook, summed over ranks, is the documented count: every page
 *     below p scanned (2 d / (d + dv) tokens each) plus the tokens read;
 *   - budget=10% reads ceil(0.1 n / page) pages; page must divide the
 *     shard chunk when P > 1. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "methods/method.h"
#include "emu.h"
#include "testutil.h"

#define N 700
#define D 8
#define DV 5
#define C 32 /* shard chunk: two pages of 16 */

static float K[N * D], V[N * DV];

static void data(uint64_t seed, int nkeys)
{
    kv_rng r;
    kv_rng_seed(&r, seed, 1, 2);
    for (int i = 0; i < N * D; i++) K[i] = (float)kv_rng_normal(&r);
    for (int i = 0; i < N * DV; i++) V[i] = (float)(0.5 + kv_rng_normal(&r));
    for (int i = nkeys; nkeys > 0 && i < N; i++)
        memcpy(K + i * D, K + (int)kv_rng_below(&r, (uint64_t)nkeys) * D, sizeof(float) * D);
}

static kv_method_ctx base_ctx(void)
{
    kv_method_ctx c;
    memset(&c, 0, sizeof c);
    c.d = D;
    c.dv = DV;
    c.scale = 1.0 / sqrt((double)D);
    c.n_total = N;
    c.nranks = 1;
    c.seed = 1;
    return c;
}

/* the brute force of the header, output z (DV) and the tokens read */
static int64_t brute(const float *q, int64_t p, int64_t page, int64_t pages, double *z)
{
    int64_t np = (p + page - 1) / page, nread = 0;
    double *key = malloc(sizeof(double) * (size_t)np);
    char *take = calloc((size_t)np, 1);
    for (int64_t g = 0; g < np; g++) {
        double b = 0;
        for (int c = 0; c < D; c++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int64_t i = g * page; i < (g + 1) * page && i < p; i++) {
                lo = K[i * D + c] < lo ? K[i * D + c] : lo;
                hi = K[i * D + c] > hi ? K[i * D + c] : hi;
            }
            double a = (double)q[c] * lo, y = (double)q[c] * hi;
            b += a > y ? a : y;
        }
        key[g] = (double)(float)(b * (1.0 / sqrt((double)D)));
    }
    if (np > 0) take[np - 1] = 1; /* p >= 1 here; says so to GCC, which warns under ASan */
    for (int64_t k = 1; k < pages && k < np; k++) { /* the next largest, lower g on ties */
        int64_t best = -1;
        for (int64_t g = 0; g < np; g++)
            if (!take[g] && (best < 0 || key[g] > key[best])) best = g;
        take[best] = 1;
    }
    double m = -INFINITY, l = 0, u[DV] = { 0 };
    for (int pass = 0; pass < 2; pass++)
        for (int64_t i = 0; i < p; i++) {
            if (!take[i / page]) continue;
            double a = (double)(kv_dot_fixed(q, K + i * D, D) * (float)(1.0 / sqrt((double)D)));
            if (pass == 0) { m = a > m ? a : m; nread++; continue; }
            double e = exp(a - m);
            l += e;
            for (int c = 0; c < DV; c++) u[c] += e * V[i * DV + c];
        }
    for (int c = 0; c < DV; c++) z[c] = u[c] / l;
    free(key);
    free(take);
    return nread;
}

/* One spec at P ranks against the brute force (page, pages) at a few
 * prefixes, 4 queries each; also the cost hook. */
static void against_brute(const char *spec, int P, int64_t page, int64_t pages, const char *what)
{
    kv_method_ctx base = base_ctx();
    emu e;
    kv_err err;
    kv_err_clear(&err);
    if (emu_open(&e, spec, &base, P, C, &err)) {
        CHECK(0, "%s: %s", spec, err.msg);
        return;
    }
    kv_rng r;
    kv_rng_seed(&r, 9, 9, 9);
    const int64_t at[] = { 1, 15, 16, 17, 100, 333, 640, N };
    float Q[4 * D];
    for (size_t a = 0; a < sizeof at / sizeof *at; a++) {
        int64_t p = at[a], pp[4] = { p, p, p, p };
        for (int i = 0; i < 4 * D; i++) Q[i] = (float)(2.0 * kv_rng_normal(&r));
        emu_advance(&e, K, V, p);
        kv_query_cost c0 = { 0 }, c1 = { 0 };
        for (int k = 0; k < P; k++) {
            kv_query_cost x;
            e.ops->cost(e.inst[k], &x);
            c0.read_tokens += x.read_tokens;
        }
        int L = e.ops->select_len(e.inst[0]);
        double *gsel = malloc(sizeof(double) * 4 * (size_t)L), st[4 * (DV + 3)];
        emu_select(&e, Q, pp, 4, gsel, st);
        free(gsel);
        for (int k = 0; k < P; k++) {
            kv_query_cost x;
            e.ops->cost(e.inst[k], &x);
            c1.read_tokens += x.read_tokens;
        }
        double want = 0;
        for (int q = 0; q < 4; q++) {
            double z[DV], zb[DV];
            kv_partial_output(st + q * (DV + 3), DV, z);
            int64_t nread = brute(Q + q * D, p, page, pages, zb);
            double e_ = kv_test_relerr(z, zb, DV);
            CHECK(e_ <= 1e-9, "%s P=%d %s p=%lld query %d: relative error %.3g vs the brute force", spec, P, what,
                  (long long)p, q, e_);
            /* pages below p on all ranks, each 2 D / (D + DV) tokens of bounds */
            want += (double)((p + page - 1) / page) * 2.0 * D / (D + DV) + (double)nread;
        }
        double got = c1.read_tokens - c0.read_tokens;
        CHECK(fabs(got - want) <= 1e-9 * want, "%s P=%d p=%lld: read_tokens %.6g, want %.6g", spec, P, (long long)p, got,
              want);
    }
    emu_close(&e);
}

int main(void)
{
    kv_err err;
    data(5, 0);
    for (int P = 1; P <= 3; P++) {
        against_brute("quest:pages=3", P, 16, 3, "random keys");
        against_brute("quest:page=8,pages=7", P, 8, 7, "random keys");
        against_brute("quest:pages=1", P, 16, 1, "random keys (newest page only)");
        against_brute("quest:pages=100000", P, 16, 100000, "every page (exact attention)");
    }
    data(6, 3); /* three distinct keys: bounds tie, the lower page index wins */
    for (int P = 1; P <= 3; P++) against_brute("quest:pages=4", P, 16, 4, "tied bounds");

    /* every page is exact attention: against the double-precision exact fold */
    data(7, 0);
    {
        kv_method_ctx base = base_ctx();
        emu e;
        kv_err_clear(&err);
        CHECK(emu_open(&e, "quest:pages=44", &base, 3, C, &err) == KV_OK, "%s", err.msg);
        float q[D];
        for (int c = 0; c < D; c++) q[c] = (float)(0.3 * c - 1);
        int64_t p = N;
        double gsel[44], st[DV + 3], z[DV], ref[DV], m = -INFINITY, l = 0, u[DV] = { 0 };
        emu_advance(&e, K, V, p);
        emu_select(&e, q, &p, 1, gsel, st);
        kv_partial_output(st, DV, z);
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < N; i++) {
                double a = 0;
                for (int c = 0; c < D; c++) a += (double)q[c] * K[i * D + c];
                a /= sqrt((double)D);
                if (pass == 0) { m = a > m ? a : m; continue; }
                l += exp(a - m);
                for (int c = 0; c < DV; c++) u[c] += exp(a - m) * V[i * DV + c];
            }
        for (int c = 0; c < DV; c++) ref[c] = u[c] / l;
        /* float logits: |a| <= |q| |k| ~ 10, rounding ~1e-6 relative */
        CHECK(kv_test_relerr(z, ref, DV) <= 1e-5, "every page vs exact: relative error %.3g", kv_test_relerr(z, ref, DV));
        emu_close(&e);
    }

    /* budget=10%: ceil(0.1 N / 16) = 5 pages, the list length */
    {
        kv_method_ctx base = base_ctx();
        emu e;
        kv_err_clear(&err);
        CHECK(emu_open(&e, "quest:budget=10%", &base, 1, C, &err) == KV_OK, "%s", err.msg);
        CHECK(e.ops->select_len(e.inst[0]) == 5, "budget=10%%: %d pages, want 5", e.ops->select_len(e.inst[0]));
        emu_close(&e);
        kv_err_clear(&err);
        CHECK(emu_open(&e, "quest:page=12", &base, 2, C, &err) == KV_EINPUT && strstr(err.msg, "must divide"),
              "page=12 with chunk 32 at 2 ranks: want a refusal, got '%s'", err.msg);
        kv_err_clear(&err);
        CHECK(emu_open(&e, "quest:pages=3,budget=5%", &base, 1, C, &err) == KV_EINPUT, "pages and budget: want a refusal");
    }
    return kv_test_result("test_quest");
}
