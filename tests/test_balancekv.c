/* test_balancekv.c - BalanceKV (src/methods/balancekv.c) through its ops.
 *
 * Checked:
 *   - tokens >= n never halves: exact attention at every prefix, to the
 *     rounding of double sums over float logits;
 *   - a seed fixes the answer bitwise, another seed changes it;
 *   - statistics on a clustered stream (n = 4096, 24 clusters), 10 seeds,
 *     16 queries near centres at the end: the mean relative error falls as
 *     the budget grows (256 -> 1024 rows: 1/sqrt(b) alone gives x0.5, the
 *     test asks x0.75), and the walk beats fair coins (c = 1e12, the same
 *     merge-and-reduce with random halving) by more than twice the
 *     standard error of the paired difference;
 *   - memory: bytes summed over P = 1..3 emulated ranks within the budget,
 *     budget= the documented rows, refusals in one line. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/method.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "core/rng.h"
#include "testutil.h"

#define D 16
#define DV 8

typedef struct {
    int64_t n;
    float *K, *V;
    float Q[16 * D];
    double vmax;
} data;

/* clustered keys: centres N(0, 1), members centre + 0.3 N(0, 1); values
 * N(0.5, 1); queries 2 x a centre + noise */
static void data_gen(data *x, int64_t n, uint64_t seed)
{
    kv_rng r;
    kv_rng_seed(&r, seed, 1, 2);
    float cen[24 * D];
    for (int i = 0; i < 24 * D; i++) cen[i] = (float)kv_rng_normal(&r);
    x->n = n;
    x->K = malloc(sizeof(float) * (size_t)(n * D));
    x->V = malloc(sizeof(float) * (size_t)(n * DV));
    x->vmax = 0;
    for (int64_t t = 0; t < n; t++) {
        int c = (int)kv_rng_below(&r, 24);
        for (int j = 0; j < D; j++) x->K[t * D + j] = cen[c * D + j] + (float)(0.3 * kv_rng_normal(&r));
        for (int j = 0; j < DV; j++) {
            x->V[t * DV + j] = (float)(0.5 + kv_rng_normal(&r));
            x->vmax = fabs(x->V[t * DV + j]) > x->vmax ? fabs(x->V[t * DV + j]) : x->vmax;
        }
    }
    for (int q = 0; q < 16; q++) {
        int c = (int)kv_rng_below(&r, 24);
        for (int j = 0; j < D; j++) x->Q[q * D + j] = 2 * cen[c * D + j] + (float)(0.3 * kv_rng_normal(&r));
    }
}

static kv_method_ctx make_ctx(int64_t n, int P, int rank, int64_t shard)
{
    kv_method_ctx c;
    memset(&c, 0, sizeof c);
    c.d = D;
    c.dv = DV;
    c.scale = 1.0 / sqrt((double)D);
    c.n_total = n;
    c.rank = rank;
    c.nranks = P;
    c.shard_tokens = shard;
    c.seed = 42;
    c.semantics = KV_SEM_FULL;
    return c;
}

static void *make(const char *text, const kv_method_ctx *ctx, kv_err *err)
{
    kv_spec *sp = NULL;
    int cnt = 0;
    void *st = NULL;
    const kv_method_ops *ops = kv_method_find("balancekv");
    if (kv_spec_parse_list(text, &sp, &cnt, err) == KV_OK && ops->create(&sp[0], ctx, &st, err) != KV_OK) st = NULL;
    free(sp);
    return st;
}

/* exact attention of q over [0, p) in double from float logits */
static void exact_ref(const data *x, const float *q, int64_t p, double *st)
{
    kv_partial_clear(st, DV);
    for (int64_t i = 0; i < p; i++)
        kv_partial_add_one(st, DV, (double)(kv_dot_fixed(q, x->K + i * D, D) * (float)(1.0 / sqrt((double)D))), 1.0,
                           x->V + i * DV);
}

static double rel_err(const double *st, const double *ref)
{
    double z[DV], zr[DV], num = 0, den = 0;
    kv_partial_output(st, DV, z);
    kv_partial_output(ref, DV, zr);
    for (int c = 0; c < DV; c++) {
        num += (z[c] - zr[c]) * (z[c] - zr[c]);
        den += zr[c] * zr[c];
    }
    return sqrt(num / den);
}

/* mean relative error of the 16 queries at prefix n, after streaming */
static double run_err(const data *x, const char *spec)
{
    const kv_method_ops *ops = kv_method_find("balancekv");
    kv_method_ctx ctx = make_ctx(x->n, 1, 0, x->n);
    kv_err err = { 0 };
    void *st = make(spec, &ctx, &err);
    CHECK(st != NULL, "%s: %s", spec, err.msg);
    if (!st) return NAN;
    for (int64_t t = 0; t < x->n; t += 100) {
        size_t len = (size_t)(x->n - t < 100 ? x->n - t : 100);
        CHECK(ops->ingest(st, x->K + t * D, x->V + t * DV, t, len, &err) == KV_OK, "ingest: %s", err.msg);
    }
    double s[16 * (DV + 3)], ref[DV + 3], e = 0;
    CHECK(ops->partial(st, x->Q, 16, x->n, s) == KV_OK, "partial");
    for (int q = 0; q < 16; q++) {
        exact_ref(x, x->Q + q * D, x->n, ref);
        e += rel_err(s + q * (DV + 3), ref) / 16;
    }
    ops->free(st);
    return e;
}

static void test_exact_when_it_fits(void)
{
    data x;
    data_gen(&x, 900, 5);
    const kv_method_ops *ops = kv_method_find("balancekv");
    for (int P = 1; P <= 3; P++) {
        /* rank 0 of P with chunk-cyclic chunks of 50: its tokens only */
        int64_t shard = 0;
        for (int64_t t = 0; t < x.n; t++) shard += (t / 50) % P == 0;
        kv_method_ctx ctx = make_ctx(x.n, P, 0, shard);
        kv_err err = { 0 };
        void *st = make("balancekv:tokens=900", &ctx, &err);
        CHECK(st != NULL, "tokens=n P=%d: %s", P, err.msg);
        if (!st) continue;
        double worst = 0, tol = 0;
        for (int64_t t = 0; t < x.n; t++) {
            if ((t / 50) % P) continue;
            CHECK(ops->ingest(st, x.K + t * D, x.V + t * DV, t, 1, &err) == KV_OK, "ingest");
            if (t % 37) continue;
            double s[DV + 3], ref[DV + 3], z[DV], zr[DV];
            CHECK(ops->partial(st, x.Q, 1, t + 1, s) == KV_OK, "partial");
            kv_partial_clear(ref, DV);
            for (int64_t i = 0; i <= t; i++)
                if ((i / 50) % P == 0)
                    kv_partial_add_one(ref, DV, (double)(kv_dot_fixed(x.Q, x.K + i * D, D) * (float)(0.25)), 1.0,
                                       x.V + i * DV);
            kv_partial_output(s, DV, z);
            kv_partial_output(ref, DV, zr);
            for (int c = 0; c < DV; c++) worst = fabs(z[c] - zr[c]) > worst ? fabs(z[c] - zr[c]) : worst;
            /* the same float logits and weights 1; only the order of the
             * double sums differs: a few ulps per term */
            double tp = (4.0 * (double)(t + 1) + 32) * DBL_EPSILON * x.vmax;
            tol = tp > tol ? tp : tol;
        }
        kv_method_extra ex = { -1, -1, 0 };
        ops->extra(st, &ex);
        CHECK(ex.kept_tokens == shard, "tokens=n P=%d: keeps %lld of %lld", P, (long long)ex.kept_tokens, (long long)shard);
        CHECK(worst <= tol, "tokens=n P=%d: differs from exact by %.3g > %.3g", P, worst, tol);
        ops->free(st);
    }
    free(x.K);
    free(x.V);
}

static void test_seed(void)
{
    data x;
    data_gen(&x, 3000, 8);
    double a = run_err(&x, "balancekv:tokens=300,seed=1"), b = run_err(&x, "balancekv:tokens=300,seed=1"),
           c = run_err(&x, "balancekv:tokens=300,seed=2");
    CHECK(a == b, "same seed, different answers: %.17g vs %.17g", a, b);
    CHECK(a != c, "seeds 1 and 2 give the same error %.17g", a);
    free(x.K);
    free(x.V);
}

static void test_statistics(void)
{
    const int S = 10;
    double e256 = 0, e1024 = 0, walk = 0, fair = 0, dsum = 0, dsq = 0;
    for (int sd = 0; sd < S; sd++) {
        data x;
        data_gen(&x, 4096, 100 + (uint64_t)sd);
        char s1[64], s2[64], s3[64];
        snprintf(s1, sizeof s1, "balancekv:tokens=256,seed=%d", sd);
        snprintf(s2, sizeof s2, "balancekv:tokens=1024,seed=%d", sd);
        snprintf(s3, sizeof s3, "balancekv:tokens=1024,seed=%d,c=1e12", sd);
        double a = run_err(&x, s1), b = run_err(&x, s2), f = run_err(&x, s3);
        e256 += a / S;
        e1024 += b / S;
        walk += b / S;
        fair += f / S;
        dsum += f - b;
        dsq += (f - b) * (f - b);
        free(x.K);
        free(x.V);
    }
    double dm = dsum / S, se = sqrt((dsq / S - dm * dm) / (S - 1));
    printf("  mean relative error: 256 rows %.4f, 1024 rows %.4f; at 1024 walk %.4f, fair coins %.4f "
           "(difference %.4f, standard error %.4f)\n", e256, e1024, walk, fair, dm, se);
    CHECK(e1024 <= 0.75 * e256, "error does not fall with the budget: %.4f (256) -> %.4f (1024)", e256, e1024);
    CHECK(dm > 2 * se && dm > 0, "the walk does not beat fair coins: %.4f vs %.4f (se %.4f)", walk, fair, se);
}

/* bytes summed over P emulated ranks at the end <= the budget in rows */
static void test_budget(void)
{
    data x;
    data_gen(&x, 5000, 9);
    const kv_method_ops *ops = kv_method_find("balancekv");
    int64_t row = (D + DV) * 4;
    for (int P = 1; P <= 3; P++) {
        const char *specs[] = { "balancekv:tokens=400", "balancekv:budget=10%" };
        int64_t lim[] = { 400 * (row + 1), (int64_t)(0.1 * 5000 * row) };
        for (int k = 0; k < 2; k++) {
            size_t peak = 0;
            for (int r = 0; r < P; r++) {
                int64_t shard = 0;
                for (int64_t t = 0; t < x.n; t++) shard += (t / 64) % P == r;
                kv_method_ctx ctx = make_ctx(x.n, P, r, shard);
                kv_err err = { 0 };
                void *st = make(specs[k], &ctx, &err);
                CHECK(st != NULL, "%s P=%d: %s", specs[k], P, err.msg);
                if (!st) continue;
                size_t most = 0;
                for (int64_t t = 0; t < x.n; t++) {
                    if ((t / 64) % P != r) continue;
                    CHECK(ops->ingest(st, x.K + t * D, x.V + t * DV, t, 1, &err) == KV_OK, "ingest: %s", err.msg);
                    size_t b = ops->bytes(st);
                    most = b > most ? b : most;
                }
                CHECK((int64_t)most <= ops->max_bytes(st), "%s P=%d: %zu bytes over max_bytes", specs[k], P, most);
                peak += most; /* bytes only grow: the last is each rank's peak */
                ops->free(st);
            }
            printf("  %s P=%d: %zu bytes (budget %lld)\n", specs[k], P, peak, (long long)lim[k]);
            CHECK((int64_t)peak <= lim[k], "%s P=%d: %zu bytes over %lld", specs[k], P, peak, (long long)lim[k]);
            CHECK((int64_t)peak >= lim[k] / 2, "%s P=%d: %zu bytes, under half of %lld", specs[k], P, peak,
                  (long long)lim[k]);
        }
    }
    const char *bad[] = { "balancekv:tokens=10,budget=1MiB", "balancekv:budget=100", "balancekv:c=0" };
    const char *why[] = { "not both", "too few", "c" };
    for (int i = 0; i < 3; i++) {
        kv_method_ctx ctx = make_ctx(x.n, 2, 0, x.n / 2);
        kv_err err = { 0 };
        void *st = make(bad[i], &ctx, &err);
        CHECK(!st && err.code == KV_EINPUT && strstr(err.msg, why[i]) && !strchr(err.msg, '\n'), "%s: '%s'", bad[i],
              err.msg);
        if (st) ops->free(st);
    }
    free(x.K);
    free(x.V);
}

int main(void)
{
    test_exact_when_it_fits();
    test_seed();
    test_statistics();
    test_budget();
    return kv_test_result("test_balancekv");
}
