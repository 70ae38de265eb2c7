/* test_qattn.c - the quantised caches answer in the compressed domain
 * (kernels/qattn.h) what attention over their decoded cache gives, to
 * float rounding, on every path (fast layouts and the decode fallback).
 *
 * For each kivi and qjl spec: one stream of n tokens (keys around offset
 * cluster centres, so zero points matter) is ingested after the horizon
 * n, then partial answers nq queries at p = n.  The reference quantises
 * the same tokens with the same quantiser (methods/quant.h, the same codes
 * bit for bit), decodes them in double (z + s c with the half z, s), and
 * computes softmax attention in double.  Bound on |z_kernel - z_ref|:
 *   - a logit is a float sum of d terms (kivi: qz + sum (scale q s) code,
 *     each term at most scale |q_c| (|z_c| + L s_c), the same bound as for
 *     scale q . k; qjl: m/4 nibble-table sums of |y_j|), so it is off by at most
 *     dl = gamma(d + 8) scale sum_c |q_c| max_t |k_tc| (qjl: gamma(m + 8) c
 *     |k| sum_j |y_j|), gamma(n) = n u / (1 - n u), u = 2^-24;
 *   - the float exp (kv_expf_neg, relative 1e-7) and the shift: 3e-7;
 *   - so every weight w_t is off by a factor within exp(+-(2 dl + 3e-7)),
 *     and the normalised output, a weighted mean of values of magnitude at
 *     most Vmax, by at most 2 (2 dl + 3e-7) Vmax;
 *   - the values: P.V in float over at most a tile (KV_QTILE = 128 terms,
 *     the pending lanes, plus the split w (s c) + w z: gamma(136) relative
 *     to sum w |v|) and the double state: gamma(136) Vmax (l likewise).
 * tol = 2 (2 dl + 3e-7) Vmax + gamma(136) Vmax, with dl the largest over
 * tokens and queries.  The kernel must also be bitwise the same at 1 and 2
 * OpenMP threads, and differ from the reference by more than nothing only
 * within tol (a wrong scale or code order gives errors of order Vmax).
 * The cost hook (method.h) reports every kept token read, and between the
 * codes and the bytes held (qjl: plus S, read per query). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "kernels/qattn.h"
#include "methods/method.h"
#include "methods/common/quant.h"
#include "testutil.h"

#define QJL_SALT 0x716a6cULL /* as in methods/qjl.c */

static double gam(int n) { double u = 0x1p-24; return n * u / (1 - n * u); }

typedef struct {
    const char *spec;
    int kivi, d, dv, bits, G, R, m, vbits, vgroup;
} qcase;

static const qcase cases[] = {
    { "kivi:bits=2,group=32,residual=40", 1, 64, 64, 2, 32, 40, 0, 0, 0 },
    { "kivi:bits=4,group=32,residual=40", 1, 64, 64, 4, 32, 40, 0, 0, 0 },
    { "kivi:bits=8,group=32,residual=0", 1, 64, 64, 8, 32, 0, 0, 0, 0 },
    { "kivi:bits=4,group=64,residual=7", 1, 32, 128, 4, 64, 7, 0, 0, 0 },  /* tiles inside a group, wide values */
    { "kivi:bits=2,group=16,residual=5", 1, 64, 64, 2, 16, 5, 0, 0, 0 },   /* word keys, decoded values (gv < 16) */
    { "kivi:bits=4,group=5,residual=3", 1, 24, 20, 4, 5, 3, 0, 0, 0 },     /* part token vectors, decoded values */
    { "kivi:bits=8,group=32,residual=9", 1, 24, 24, 8, 32, 9, 0, 0, 0 },   /* 6 words a token: decoded values */
    { "kivi:bits=8,group=16,residual=2", 1, 48, 48, 8, 16, 2, 0, 0, 0 },   /* 12 words a token: decoded values */
    { "kivi:bits=2,group=33,residual=3", 1, 20, 32, 2, 33, 3, 0, 0, 0 },   /* channels past d, part vectors of 2-word tokens */
    { "kivi:bits=8,group=64,residual=1", 1, 64, 128, 8, 64, 1, 0, 0, 0 },  /* 32 words a token: pieces, a group per 16 words */
    { "qjl:m=128,residual=20", 0, 64, 64, 0, 0, 20, 128, 32, 32 },
    { "qjl:m=64,vbits=4,residual=0", 0, 64, 64, 0, 0, 0, 64, 4, 32 },
    { "qjl:m=96,vbits=2,group=8,residual=3", 0, 40, 48, 0, 0, 3, 96, 2, 8 }, /* decoded values */
    { "qjl:m=64,vbits=8,group=16,residual=1", 0, 32, 64, 0, 0, 1, 64, 8, 16 },
    { "qjl:m=40,vbits=4,group=64,residual=2", 0, 24, 64, 0, 0, 2, 40, 4, 64 }, /* a part sign word (5 bytes) */
    { "qjl:m=176,vbits=2,residual=4", 0, 64, 64, 0, 0, 4, 176, 2, 32 },     /* bit-plane values, 5.5 sign words */
    { "qjl:m=24,vbits=2,group=16,residual=0", 0, 40, 48, 0, 0, 0, 24, 2, 16 }, /* bit planes, 3 chunks; 2 + 1 sign bytes */
};

/* x decoded in double by the quantiser's own codes: out[i] = z + s c_i */
static void roundtrip(const float *x, int n, int stride, int bits, double *out, double *amax)
{
    uint8_t codes[4096] = { 0 };
    uint16_t zs[2];
    if (kv_quantise(x, (size_t)n, (size_t)stride, bits, codes, 0, 1, zs)) abort();
    double z = kv_half_to_float(zs[0]), s = kv_half_to_float(zs[1]);
    for (int i = 0; i < n; i++) {
        out[i] = z + s * kv_qcode_get(codes, bits, (size_t)i);
        double a = fabs(z) + s * ((1 << bits) - 1);
        if (a > *amax) *amax = a;
    }
}

static void run_case(const qcase *c)
{
    enum { N = 8192, NQ = 3 };
    int d = c->d, dv = c->dv;
    double scale = 1 / sqrt(d);
    float *K = malloc(sizeof(float) * N * d), *V = malloc(sizeof(float) * N * dv), Q[NQ * 128];
    double *Kd = malloc(sizeof(double) * N * d), *Vd = malloc(sizeof(double) * N * dv);
    double *klim = calloc((size_t)N * d, sizeof(double)); /* max |k| per token and channel bound (kivi) */
    kv_rng r;
    kv_rng_seed(&r, 11, (uint64_t)d, (uint64_t)dv);
    float cen[8][128];
    for (int i = 0; i < 8; i++)
        for (int x = 0; x < d; x++) cen[i][x] = (float)(2 * kv_rng_normal(&r) + 3);
    for (int t = 0; t < N; t++) {
        int ci = (int)kv_rng_below(&r, 8);
        for (int x = 0; x < d; x++) K[t * d + x] = cen[ci][x] + 0.5f * (float)kv_rng_normal(&r);
        for (int x = 0; x < dv; x++) V[t * dv + x] = (float)(kv_rng_normal(&r) + 1.5);
    }
    for (int i = 0; i < NQ * d; i++) Q[i] = (float)(0.3 * kv_rng_normal(&r));
    /* the reference cache */
    int64_t nqt = c->kivi ? (N - c->R) / c->G * c->G : N - c->R; /* tokens held quantised */
    double vmax = 0, kbound = 0;
    for (int t = 0; t < N * d; t++) Kd[t] = K[t];
    for (int t = 0; t < N * dv; t++) {
        Vd[t] = V[t];
        vmax = fmax(vmax, fabs(V[t]));
    }
    int gvk = c->kivi ? (c->G < dv ? c->G : dv) : (c->vgroup < dv ? c->vgroup : dv);
    int vb = c->kivi ? c->bits : c->vbits;
    for (int64_t t0 = 0; t0 < nqt && c->kivi; t0 += c->G)
        for (int x = 0; x < d; x++) {
            double col[4096], am = 0;
            roundtrip(K + t0 * d + x, c->G, d, c->bits, col, &am);
            for (int t = 0; t < c->G; t++) Kd[(t0 + t) * d + x] = col[t];
            kbound = fmax(kbound, am);
        }
    for (int64_t t = 0; t < nqt && vb < 32; t++)
        for (int x0 = 0; x0 < dv; x0 += gvk) {
            int nc = dv - x0 < gvk ? dv - x0 : gvk;
            roundtrip(V + t * dv + x0, nc, 1, vb, Vd + t * dv + x0, &vmax);
        }
    /* qjl: the projection, signs and norms as qjl.c makes them */
    float *S = NULL;
    double cq = 0;
    if (!c->kivi) {
        S = malloc(sizeof(float) * c->m * d);
        for (int j = 0; j < c->m; j++)
            for (int x = 0; x < d; x++) S[j * d + x] = (float)kv_hash_normal(1 ^ QJL_SALT, 0, (uint64_t)j, (uint64_t)x);
        cq = sqrt(M_PI / 2) / c->m * scale;
    }
    kv_method_ctx ctx = { .d = d, .dv = dv, .scale = scale, .n_total = N, .nranks = 1, .shard_tokens = N,
                          .chunk = N, .seed = 1 };
    double out[2][NQ * 131], ref[NQ * 131];
    for (int th = 0; th < 2; th++) {
        omp_set_num_threads(th + 1);
        kv_err err;
        kv_err_clear(&err);
        kv_spec *sp = NULL;
        int cnt = 0;
        void *st = NULL;
        char name[8];
        snprintf(name, sizeof name, "%s", c->kivi ? "kivi" : "qjl");
        const kv_method_ops *ops = kv_method_find(name);
        int bad = !ops || kv_spec_parse_list(c->spec, &sp, &cnt, &err) || ops->create(&sp[0], &ctx, &st, &err);
        if (!bad) {
            ops->horizon(st, N);
            for (int a = 0; a < N && !bad; a += 1000)
                bad = ops->ingest(st, K + (size_t)a * d, V + (size_t)a * dv, a, (size_t)(N - a < 1000 ? N - a : 1000), &err);
        }
        double stt[NQ * 131];
        if (!bad) bad = ops->partial(st, Q, NQ, N, stt);
        CHECK(!bad, "%s: %s", c->spec, err.msg);
        for (int q = 0; q < NQ && !bad; q++) kv_partial_output(stt + q * KV_PSTATE_LEN(dv), dv, out[th] + q * dv);
        if (!bad) { /* the cost hook: every kept token read, no more bytes than held, at least the codes */
            kv_query_cost qc = { 0, 0, 0 };
            kv_method_extra x;
            ops->cost(st, &qc);
            ops->extra(st, &x);
            CHECK(qc.read_tokens == (double)x.kept_tokens, "%s: cost read %g tokens of %lld kept", c->spec,
                  qc.read_tokens, (long long)x.kept_tokens);
            CHECK(qc.read_bytes > (double)nqt * (c->kivi ? (d + dv) * c->bits / 8.0 : c->m / 8.0) &&
                      qc.read_bytes <= (double)ops->bytes(st) + (c->kivi ? 0 : NQ * 4.0 * c->m * d),
                  "%s: cost read %g bytes, %zu held", c->spec, qc.read_bytes, ops->bytes(st));
            CHECK(qc.flops >= (double)NQ * nqt * 2 * dv, "%s: cost %g flops", c->spec, qc.flops);
        }
        if (st) ops->free(st);
        free(sp);
        if (bad) goto done;
    }
    omp_set_num_threads(2);
    CHECK(!memcmp(out[0], out[1], sizeof(double) * NQ * dv), "%s: the answer depends on the thread count", c->spec);
    double dl = 0, worst = 0;
    for (int q = 0; q < NQ; q++) {
        const float *qv = Q + q * d;
        double *lg = malloc(sizeof(double) * N), mx = -INFINITY, qa = 0;
        for (int x = 0; x < d; x++) qa += fabs(qv[x]);
        float y[1024];
        double ya = 0;
        for (int j = 0; j < c->m; j++) {
            y[j] = kv_dot_fixed(S + j * d, qv, d);
            ya += fabs(y[j]);
        }
        for (int t = 0; t < N; t++) {
            const double *k = Kd + (size_t)t * d;
            double a = 0;
            if (!c->kivi && t < nqt) { /* the sign estimate */
                const float *kf = K + (size_t)t * d;
                double nn = 0;
                for (int x = 0; x < d; x++) nn += (double)kf[x] * kf[x];
                float norm = (float)sqrt(nn);
                for (int j = 0; j < c->m; j++) a += (kv_dot_fixed(S + j * d, kf, d) >= 0 ? 1.0 : -1.0) * y[j];
                a *= cq * norm;
                dl = fmax(dl, gam(c->m + 8) * cq * norm * ya);
            } else {
                for (int x = 0; x < d; x++) a += (double)qv[x] * k[x];
                a *= scale;
                double kb = 0;
                for (int x = 0; x < d; x++) kb = fmax(kb, fabs(k[x]));
                dl = fmax(dl, gam(d + 8) * scale * qa * fmax(kb, kbound));
            }
            lg[t] = a;
            mx = fmax(mx, a);
        }
        double l = 0;
        for (int x = 0; x < dv; x++) ref[q * dv + x] = 0;
        for (int t = 0; t < N; t++) {
            double w = exp(lg[t] - mx);
            l += w;
            for (int x = 0; x < dv; x++) ref[q * dv + x] += w * Vd[(size_t)t * dv + x];
        }
        for (int x = 0; x < dv; x++) {
            ref[q * dv + x] /= l;
            worst = fmax(worst, fabs(out[0][q * dv + x] - ref[q * dv + x]));
        }
        free(lg);
    }
    double tol = 2 * (2 * dl + 3e-7) * vmax + gam(KV_QTILE + 8) * vmax;
    printf("%-40s max |kernel - decoded reference| %.3g, tol %.3g (dl %.3g, Vmax %.3g)\n", c->spec, worst, tol, dl,
           vmax);
    CHECK(worst <= tol, "%s: %.3g > %.3g", c->spec, worst, tol);
    CHECK(tol < 1e-3 * vmax, "%s: the tolerance %.3g is too loose to tell a wrong answer", c->spec, tol);
done:
    free(K); free(V); free(Kd); free(Vd); free(klim); free(S);
}

/* kv_qhalf (branch-free) is kv_half_to_float on every finite half */
static void test_half(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++)
        if (((h >> 10) & 0x1f) != 0x1f) {
            float a = kv_qhalf(h), b = kv_half_to_float((uint16_t)h);
            bad += memcmp(&a, &b, 4) != 0;
        }
    CHECK(bad == 0, "%d finite halves decode differently", bad);
}

int main(void)
{
    test_half();
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_case(&cases[i]);
    return kv_test_result("test_qattn");
}
