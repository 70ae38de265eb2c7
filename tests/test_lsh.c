/* test_lsh.c - lsh (methods/lsh/, MagicPIG's LSH sampling) at P = 1..3
 * emulated ranks (emu.h).
 *
 * Checked:
 *   - against a brute force of the rule: codes from the documented
 *     hyperplanes (N(0, I) hashes of (seed, stream, row)), every token < p
 *     colliding in >= threshold tables sampled, weight 1 / u with u from the
 *     closed form for threshold 2, 1 - (1 - p)^L - L p (1 - p)^{L-1},
 *     p = (1 - theta / pi)^K; within 1e-9 relative at every P (the same
 *     sample on every P: the union over ranks);
 *   - threshold = 0 is exact attention (every token, u = 1);
 *   - the estimate of the softmax denominator sum e^{a_i} is unbiased over
 *     the hyperplanes: its mean over 400 seeds is within 5 standard errors
 *     of the exact sum (a wrong u, e.g. the single-table p, is biased by
 *     far more: checked to be outside that band);
 *   - the cost hook at one rank: the hyperplanes, the L heads and the
 *     bucket entries walked, in tokens' worth of bytes, plus the samples. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "methods/method.h"
#include "emu.h"
#include "testutil.h"

#define N 400
#define D 6
#define DV 3
#define C 37
#define SALT 0x6c7368ULL

static float K[N * D], V[N * DV];

static kv_method_ctx base_ctx(uint64_t seed)
{
    kv_method_ctx c;
    memset(&c, 0, sizeof c);
    c.d = D;
    c.dv = DV;
    c.scale = 1.0 / sqrt((double)D);
    c.n_total = N;
    c.nranks = 1;
    c.seed = seed;
    c.stream = 2;
    return c;
}

static int code(uint64_t seed, int l, int Kb, const float *x)
{
    int c = 0;
    for (int b = 0; b < Kb; b++) {
        float h[D];
        for (int j = 0; j < D; j++) h[j] = (float)kv_hash_normal(seed ^ SALT, 2, (uint64_t)(l * Kb + b), (uint64_t)j);
        c |= (kv_dot_fixed(h, x, D) >= 0.0f) << b;
    }
    return c;
}

/* the brute force: output z and the estimated denominator sum e^{a} / u;
 * single = 1 uses the single-table probability (a wrong rule) */
static double brute(uint64_t seed, int Kb, int L, const float *q, int64_t p, double *z, int single, double *walked,
                    double *ns)
{
    double m = -INFINITY, l = 0, u[DV] = { 0 }, a[N], w[N];
    int cq[64];
    for (int t = 0; t < L; t++) cq[t] = code(seed, t, Kb, q);
    *walked = *ns = 0;
    for (int64_t i = 0; i < p; i++) {
        int hits = 0;
        for (int t = 0; t < L; t++) hits += code(seed, t, Kb, K + i * D) == cq[t];
        *walked += hits;
        w[i] = 0;
        if (hits < 2) continue;
        double dot = kv_dot_fixed(q, K + i * D, D), qn = sqrt(kv_dot_fixed(q, q, D)), kn = sqrt(kv_dot_fixed(K + i * D, K + i * D, D));
        double pp = pow(1.0 - acos(fmax(-1.0, fmin(1.0, dot / (qn * kn)))) / M_PI, Kb);
        double uu = single ? pp : 1.0 - pow(1.0 - pp, L) - L * pp * pow(1.0 - pp, L - 1);
        a[i] = (double)(kv_dot_fixed(q, K + i * D, D) * (float)(1.0 / sqrt((double)D)));
        w[i] = 1.0 / uu;
        m = a[i] > m ? a[i] : m;
        (*ns)++;
    }
    for (int64_t i = 0; i < p; i++) {
        if (w[i] == 0) continue;
        double e = w[i] * exp(a[i] - m);
        l += e;
        for (int c = 0; c < DV; c++) u[c] += e * V[i * DV + c];
    }
    for (int c = 0; c < DV; c++) z[c] = l > 0 ? u[c] / l : 0;
    return l * exp(m);
}

/* one query at prefix p on P ranks: merged state st */
static void ask(const char *spec, uint64_t seed, int P, const float *q, int64_t p, double *st, kv_query_cost *cost)
{
    kv_method_ctx base = base_ctx(seed);
    emu e;
    kv_err err;
    kv_err_clear(&err);
    if (emu_open(&e, spec, &base, P, C, &err)) {
        CHECK(0, "%s: %s", spec, err.msg);
        return;
    }
    kv_query_cost c0 = { 0 }, c1 = { 0 }, x;
    emu_advance(&e, K, V, p);
    for (int r = 0; r < P; r++) { e.ops->cost(e.inst[r], &x); c0.read_tokens += x.read_tokens; }
    emu_partial(&e, q, 1, p, st);
    for (int r = 0; r < P; r++) { e.ops->cost(e.inst[r], &x); c1.read_tokens += x.read_tokens; }
    if (cost) cost->read_tokens = c1.read_tokens - c0.read_tokens;
    emu_close(&e);
}

int main(void)
{
    kv_rng r;
    kv_rng_seed(&r, 4, 4, 4);
    for (int i = 0; i < N * D; i++) K[i] = (float)kv_rng_normal(&r);
    for (int i = 0; i < N * DV; i++) V[i] = (float)(0.5 + kv_rng_normal(&r));
    float Q[4 * D];
    for (int i = 0; i < 4 * D; i++) Q[i] = (float)(1.5 * kv_rng_normal(&r));

    /* the rule at every P, and threshold 0 exact */
    const int64_t at[] = { 1, 50, 211, N };
    for (int P = 1; P <= 3; P++)
        for (size_t a = 0; a < sizeof at / sizeof *at; a++)
            for (int q = 0; q < 4; q++) {
                double st[DV + 3], z[DV], zb[DV], walked, ns;
                kv_query_cost c = { 0 };
                ask("lsh:K=3,L=8,seed=9", 9, P, Q + q * D, at[a], st, &c);
                kv_partial_output(st, DV, z);
                brute(9, 3, 8, Q + q * D, at[a], zb, 0, &walked, &ns);
                CHECK(kv_test_relerr(z, zb, DV) <= 1e-9, "K=3,L=8 P=%d p=%lld q=%d: relative error %.3g vs the brute force", P,
                      (long long)at[a], q, kv_test_relerr(z, zb, DV));
                if (P == 1) {
                    double want = (8.0 * 3 * D * 4 + 8 * 4 + walked * 4) / ((D + DV) * 4.0) + ns;
                    CHECK(fabs(c.read_tokens - want) <= 1e-9 * want, "p=%lld q=%d: read_tokens %.6g, want %.6g",
                          (long long)at[a], q, c.read_tokens, want);
                }
                ask("lsh:K=3,L=8,threshold=0", 9, P, Q + q * D, at[a], st, NULL);
                kv_partial_output(st, DV, z);
                double m = -INFINITY, l = 0, u[DV] = { 0 };
                for (int pass = 0; pass < 2; pass++)
                    for (int64_t i = 0; i < at[a]; i++) {
                        double x = 0;
                        for (int c2 = 0; c2 < D; c2++) x += (double)Q[q * D + c2] * K[i * D + c2];
                        x /= sqrt((double)D);
                        if (pass == 0) { m = x > m ? x : m; continue; }
                        l += exp(x - m);
                        for (int c2 = 0; c2 < DV; c2++) u[c2] += exp(x - m) * V[i * DV + c2];
                    }
                for (int c2 = 0; c2 < DV; c2++) zb[c2] = u[c2] / l;
                /* float logits (|a| ~ 5): 1e-6 relative */
                CHECK(kv_test_relerr(z, zb, DV) <= 1e-5, "threshold=0 P=%d p=%lld: relative error %.3g vs exact", P,
                      (long long)at[a], kv_test_relerr(z, zb, DV));
            }

    /* unbiased denominator over the hyperplanes (one rank, p = N) */
    {
        const int R = 400;
        double exact = 0, sum = 0, sum2 = 0, wsum = 0;
        for (int64_t i = 0; i < N; i++) exact += exp((double)(kv_dot_fixed(Q, K + i * D, D) * (float)(1.0 / sqrt((double)D))));
        for (int s = 0; s < R; s++) {
            double st[DV + 3], zb[DV], walked, ns;
            char spec[64];
            snprintf(spec, sizeof spec, "lsh:K=2,L=4,seed=%d", 100 + s);
            ask(spec, 0, 1, Q, N, st, NULL);
            double den = st[KV_PS_L] * exp(st[KV_PS_M]);
            sum += den;
            sum2 += den * den;
            wsum += brute(100 + s, 2, 4, Q, N, zb, 1, &walked, &ns); /* the single-table weights */
        }
        double mean = sum / R, se = sqrt((sum2 / R - mean * mean) / R);
        printf("denominator: exact %.6g, mean of %d estimates %.6g (standard error %.3g); single-table rule %.6g\n", exact,
               R, mean, se, wsum / R);
        CHECK(fabs(mean - exact) <= 5 * se, "denominator biased: mean %.6g, exact %.6g, 5 se = %.3g", mean, exact, 5 * se);
        CHECK(fabs(wsum / R - exact) > 5 * se, "the check cannot tell a wrong rule: %.6g vs %.6g", wsum / R, exact);
    }

    kv_method_ctx base = base_ctx(1);
    emu e;
    kv_err err;
    kv_err_clear(&err);
    CHECK(emu_open(&e, "lsh:L=3,threshold=4", &base, 1, C, &err) == KV_EINPUT && strstr(err.msg, "threshold"),
          "threshold > L: want a refusal, got '%s'", err.msg);
    return kv_test_result("test_lsh");
}
