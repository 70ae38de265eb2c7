/* attn.c - exact attention kernels.
 *
 * Per tile of TILE tokens: logits for all queries, exp shifted by the
 * running max, and P.V summed in float over the tile only; tile sums go into
 * a double running state (m, l, l2, u) per query, rescaled in double on the
 * rare tiles that raise the max.
 *
 * Batched logits use the key tile transposed (d x TILE), so one broadcast of
 * q[c] feeds TILE/16 vector FMAs and no horizontal sums are needed; a single
 * query uses 4 tokens at a time with horizontal sums (memory bound anyway).
 * GCC vector extensions give AVX-512 code with -march=native and correct
 * (narrower) code elsewhere; dimensions that are not multiples of 16 take
 * the scalar paths. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "core/kverr.h"
#include "kernels/attn.h"
#include "kernels/partial.h"

#define TILE 64  /* tokens per tile: K and V tiles of d=128 are 32 KiB each */
#define VL 16    /* floats per vector */
#ifndef KV_TILE_ONE
#define KV_TILE_ONE 64 /* tile of the few-query path */
#endif
#ifndef KV_PF_LOCALITY
#define KV_PF_LOCALITY 2 /* into L2: the next tiles do not fit in L1 with the current one */
#endif
#ifndef KV_PF_TOKENS
#define KV_PF_TOKENS 128 /* software prefetch distance in tokens (0: off); 128 measured best here */
#endif

typedef float v16 __attribute__((vector_size(64)));

static inline v16 ld(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v16 bc(float x) { return (v16){ x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x }; }

void kv_expf_neg(float *x, size_t n)
{
    /* exp(x) = 2^k * exp(r), r = x - k ln2 in [-ln2/2, ln2/2]; degree-6
     * polynomial.  Branch-free so the compiler vectorises it. */
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float v = x[i] < -87.0f ? -87.0f : x[i];
        /* round to nearest with the 1.5*2^23 trick: plain arithmetic, vectorises */
        float k = (v * 1.44269504f + 12582912.0f) - 12582912.0f;
        float r = v - k * 0.693145751953125f - k * 1.428606765330187e-06f;
        float p = 1.3888889e-3f;
        p = p * r + 8.3333338e-3f;
        p = p * r + 4.1666668e-2f;
        p = p * r + 1.6666667e-1f;
        p = p * r + 0.5f;
        p = p * r + 1.0f;
        p = p * r + 1.0f;
        int ki = (int)k + 127;
        union { int i; float f; } s = { .i = ki << 23 };
        x[i] = x[i] < -87.0f ? 0.0f : p * s.f;
    }
}

/* ---- logits: S[q*TILE + t] = scale * <Q[q], K[t]> ---- */

static void logits_scalar(const float *restrict Q, int nq, const float *restrict K, int nt, int d, float scale,
                          float *restrict S)
{
    for (int q = 0; q < nq; q++)
        for (int t = 0; t < nt; t++) {
            float a = 0;
#pragma omp simd reduction(+ : a)
            for (int c = 0; c < d; c++) a += Q[(size_t)q * d + c] * K[(size_t)t * d + c];
            S[q * TILE + t] = a * scale;
        }
}

/* one query, 4 tokens per pass: independent sums, tree-reduced by the
 * compiler (OpenMP simd reductions may be reassociated).  A short last
 * group repeats its last row, so every token's logit comes from the same
 * instruction sequence whatever its place in the tile (bitwise the same
 * logits however the stream is sharded). */
static void logits_one(const float *restrict q, const float *restrict K, int nt, int d, float scale, float *restrict S,
                       const char *pfk, const char *pfv, size_t vrow)
{
    for (int t = 0; t < nt; t += 4) {
        if (pfk) { /* prefetch rows far ahead, spread evenly over the work */
            for (size_t b = 0; b < 4 * (size_t)d * sizeof(float); b += 64) __builtin_prefetch(pfk + (size_t)t * d * sizeof(float) + b, 0, KV_PF_LOCALITY);
            for (size_t b = 0; b < 4 * vrow; b += 64) __builtin_prefetch(pfv + (size_t)t * vrow + b, 0, KV_PF_LOCALITY);
        }
        const float *k[4];
        for (int i = 0; i < 4; i++) k[i] = K + (size_t)(t + i < nt ? t + i : nt - 1) * d;
        const float *k0 = k[0], *k1 = k[1], *k2 = k[2], *k3 = k[3];
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
        for (int c = 0; c < d; c++) {
            a0 += q[c] * k0[c];
            a1 += q[c] * k1[c];
            a2 += q[c] * k2[c];
            a3 += q[c] * k3[c];
        }
        float a[4] = { a0, a1, a2, a3 };
        for (int i = 0; i < 4 && t + i < nt; i++) S[t + i] = a[i] * scale;
    }
}

/* many queries: Kt is the tile transposed, d x TILE (zero padded) */
static void logits_batch(const float *restrict Q, int nq, const float *restrict Kt, int d, float scale,
                         float *restrict S)
{
    int q = 0;
    for (; q + 4 <= nq; q += 4) {
        const float *q0 = Q + (size_t)q * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
        v16 a[4][4];
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) a[i][j] = bc(0);
        for (int c = 0; c < d; c++) {
            const float *kr = Kt + (size_t)c * TILE;
            v16 k0 = ld(kr), k1 = ld(kr + 16), k2 = ld(kr + 32), k3 = ld(kr + 48);
            v16 b0 = bc(q0[c]), b1 = bc(q1[c]), b2 = bc(q2[c]), b3 = bc(q3[c]);
            a[0][0] += b0 * k0; a[0][1] += b0 * k1; a[0][2] += b0 * k2; a[0][3] += b0 * k3;
            a[1][0] += b1 * k0; a[1][1] += b1 * k1; a[1][2] += b1 * k2; a[1][3] += b1 * k3;
            a[2][0] += b2 * k0; a[2][1] += b2 * k1; a[2][2] += b2 * k2; a[2][3] += b2 * k3;
            a[3][0] += b3 * k0; a[3][1] += b3 * k1; a[3][2] += b3 * k2; a[3][3] += b3 * k3;
        }
        v16 sc = bc(scale);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) st16(S + (q + i) * TILE + j * VL, a[i][j] * sc);
    }
    for (; q < nq; q++) {
        const float *qq = Q + (size_t)q * d;
        v16 a0 = bc(0), a1 = bc(0), a2 = bc(0), a3 = bc(0);
        for (int c = 0; c < d; c++) {
            const float *kr = Kt + (size_t)c * TILE;
            v16 b = bc(qq[c]);
            a0 += b * ld(kr); a1 += b * ld(kr + 16); a2 += b * ld(kr + 32); a3 += b * ld(kr + 48);
        }
        v16 sc = bc(scale);
        st16(S + q * TILE, a0 * sc); st16(S + q * TILE + 16, a1 * sc);
        st16(S + q * TILE + 32, a2 * sc); st16(S + q * TILE + 48, a3 * sc);
    }
}

static void transpose_tile(const float *restrict K, int nt, int d, float *restrict Kt)
{
    for (int t = 0; t < nt; t++)
        for (int c = 0; c < d; c++) Kt[(size_t)c * TILE + t] = K[(size_t)t * d + c];
    for (int c = 0; c < d; c++)
        for (int t = nt; t < TILE; t++) Kt[(size_t)c * TILE + t] = 0.0f;
}

/* ---- P.V: U[q] += sum_t P[q][t] V[t] ---- */

static void pv_scalar(const float *restrict P, int nq, const float *restrict V, int nt, int dv, float *restrict U,
                      size_t ustride)
{
    for (int q = 0; q < nq; q++) {
        float *u = U + q * ustride;
        for (int t = 0; t < nt; t++) {
            float p = P[q * TILE + t];
            const float *v = V + (size_t)t * dv;
#pragma omp simd
            for (int c = 0; c < dv; c++) u[c] += p * v[c];
        }
    }
}

/* dv % 16 == 0: 4 queries share each load of a value vector */
static void pv_vec(const float *restrict P, int nq, const float *restrict V, int nt, int dv, float *restrict U,
                   size_t ustride)
{
    int q = 0;
    for (; q + 4 <= nq; q += 4) {
        const float *p0 = P + q * TILE, *p1 = p0 + TILE, *p2 = p1 + TILE, *p3 = p2 + TILE;
        float *u0 = U + q * ustride, *u1 = u0 + ustride, *u2 = u1 + ustride, *u3 = u2 + ustride;
        for (int c = 0; c < dv; c += 2 * VL) {
            int two = c + VL < dv;
            v16 a0 = ld(u0 + c), a1 = ld(u1 + c), a2 = ld(u2 + c), a3 = ld(u3 + c);
            v16 b0 = two ? ld(u0 + c + VL) : bc(0), b1 = two ? ld(u1 + c + VL) : bc(0);
            v16 b2 = two ? ld(u2 + c + VL) : bc(0), b3 = two ? ld(u3 + c + VL) : bc(0);
            for (int t = 0; t < nt; t++) {
                const float *vr = V + (size_t)t * dv + c;
                v16 v = ld(vr), w = two ? ld(vr + VL) : bc(0);
                v16 s0 = bc(p0[t]), s1 = bc(p1[t]), s2 = bc(p2[t]), s3 = bc(p3[t]);
                a0 += s0 * v; a1 += s1 * v; a2 += s2 * v; a3 += s3 * v;
                b0 += s0 * w; b1 += s1 * w; b2 += s2 * w; b3 += s3 * w;
            }
            st16(u0 + c, a0); st16(u1 + c, a1); st16(u2 + c, a2); st16(u3 + c, a3);
            if (two) { st16(u0 + c + VL, b0); st16(u1 + c + VL, b1); st16(u2 + c + VL, b2); st16(u3 + c + VL, b3); }
        }
    }
    for (; q < nq; q++) {
        const float *p = P + q * TILE;
        float *u = U + q * ustride;
        for (int c = 0; c < dv; c += 8 * VL) { /* dv = 128: one pass */
            int k = (dv - c) / VL < 8 ? (dv - c) / VL : 8;
            v16 a[8];
            for (int i = 0; i < 8; i++) a[i] = bc(0);
            for (int i = 0; i < k; i++) a[i] = ld(u + c + i * VL);
            for (int t = 0; t < nt; t++) {
                const float *vr = V + (size_t)t * dv + c;
                v16 s = bc(p[t]);
                for (int i = 0; i < k; i++) a[i] += s * ld(vr + i * VL);
            }
            for (int i = 0; i < k; i++) st16(u + c + i * VL, a[i]);
        }
    }
}

/* The serial fold behind kv_attn_fold and kv_attn_fold_multi.  Query q sees
 * tokens [0, len[q] - off) of K, V (capped at n; len NULL: all n), with len
 * non-decreasing.  Each tile is streamed once: queries whose prefix covers it
 * take it whole, the ones whose prefix ends inside it get a masked tail (their
 * P is zero past the end, so the P.V sums are those of the shorter tile), and
 * those whose prefix ends before it stop.  A query's arithmetic is that of
 * kv_attn_fold on its own prefix with the same path (batched: the caller
 * decides, from the whole call, so every slice of one call takes the same). */
static int fold_core(const float *Q, int nq, const size_t *len, size_t off, const float *K, const float *V,
                     size_t n, int d, int dv, float scale, double *st, int batched)
{
    if (n == 0 || nq == 0) return KV_OK;
    size_t sl = KV_PSTATE_LEN(dv);
    int dvec = d % VL == 0, vvec = dv % VL == 0;
    batched = batched && dvec;
    float *S = malloc(sizeof(float) * (size_t)nq * TILE);
    float *U = malloc(sizeof(float) * (size_t)nq * dv);   /* this tile's P.V, float */
    double *run = malloc(sizeof(double) * (size_t)nq * sl); /* running state, double */
    float *Kt = batched ? malloc(sizeof(float) * (size_t)d * TILE) : NULL;
    if (!S || !U || !run || (batched && !Kt)) {
        free(S);
        free(U);
        free(run);
        free(Kt);
        return KV_EINTERNAL;
    }
    for (int q = 0; q < nq; q++) kv_partial_clear(run + (size_t)q * sl, dv);
    const size_t tile = batched ? TILE : KV_TILE_ONE;
    int qa = 0; /* first query still active */
#define QLEN(q) (len ? (len[q] <= off ? 0 : len[q] - off < n ? len[q] - off : n) : n)
    for (size_t t0 = 0; t0 < n; t0 += tile) {
        while (qa < nq && QLEN(qa) <= t0) qa++;
        if (qa == nq) break;
        int na = nq - qa;
        const float *Qa = Q + (size_t)qa * d;
        int nt = (int)(n - t0 < tile ? n - t0 : tile);
        const float *Kt0 = K + t0 * (size_t)d, *Vt = V + t0 * (size_t)dv;
        int ahead = KV_PF_TOKENS && t0 + KV_PF_TOKENS + tile <= n;
        if (ahead && batched) { /* keep the memory system busy */
            const char *kp = (const char *)(Kt0 + KV_PF_TOKENS * (size_t)d);
            const char *vp = (const char *)(Vt + KV_PF_TOKENS * (size_t)dv);
            for (size_t b = 0; b < tile * (size_t)d * sizeof(float); b += 64) __builtin_prefetch(kp + b, 0, KV_PF_LOCALITY);
            for (size_t b = 0; b < tile * (size_t)dv * sizeof(float); b += 64) __builtin_prefetch(vp + b, 0, KV_PF_LOCALITY);
        }
        if (batched) {
            transpose_tile(Kt0, nt, d, Kt);
            logits_batch(Qa, na, Kt, d, scale, S);
        } else if (dvec) {
            for (int i = 0; i < na; i++) {
                size_t lq = QLEN(qa + i) - t0;
                logits_one(Qa + (size_t)i * d, Kt0, lq < (size_t)nt ? (int)lq : nt, d, scale, S + i * TILE,
                           ahead && i == 0 ? (const char *)(Kt0 + KV_PF_TOKENS * (size_t)d) : NULL,
                           (const char *)(Vt + KV_PF_TOKENS * (size_t)dv), (size_t)dv * sizeof(float));
            }
        } else {
            logits_scalar(Qa, na, Kt0, nt, d, scale, S);
        }
        for (int i = 0; i < na; i++) {
            float *s = S + i * TILE;
            double *r = run + (size_t)(qa + i) * sl;
            size_t lq = QLEN(qa + i) - t0;
            int ntq = lq < (size_t)nt ? (int)lq : nt; /* >= 1: the query is active */
            float mt = s[0];
#pragma omp simd reduction(max : mt)
            for (int t = 1; t < ntq; t++) mt = s[t] > mt ? s[t] : mt;
            if (mt > r[KV_PS_M]) { /* new running max: rescale the double state (rare) */
                if (r[KV_PS_M] != -INFINITY) {
                    double f = exp(r[KV_PS_M] - (double)mt);
                    r[KV_PS_L] *= f;
                    r[KV_PS_L2] *= f * f;
                    for (int c = 0; c < dv; c++) r[KV_PS_U + c] *= f;
                }
                r[KV_PS_M] = mt;
            }
            float m = (float)r[KV_PS_M]; /* a float logit, so exact */
#pragma omp simd
            for (int t = 0; t < ntq; t++) s[t] -= m;
            kv_expf_neg(s, (size_t)ntq);
            for (int t = ntq; t < TILE; t++) s[t] = 0.0f; /* masked tail: adds exact zeros below */
            float l = 0, l2 = 0;
#pragma omp simd reduction(+ : l, l2)
            for (int t = 0; t < ntq; t++) { l += s[t]; l2 += s[t] * s[t]; }
            r[KV_PS_L] += l;
            r[KV_PS_L2] += l2;
        }
        memset(U, 0, sizeof(float) * (size_t)na * dv);
        if (vvec) pv_vec(S, na, Vt, nt, dv, U, (size_t)dv);
        else pv_scalar(S, na, Vt, nt, dv, U, (size_t)dv);
        for (int i = 0; i < na; i++) {
            double *u = run + (size_t)(qa + i) * sl + KV_PS_U;
            const float *x = U + (size_t)i * dv;
#pragma omp simd
            for (int c = 0; c < dv; c++) u[c] += x[c];
        }
    }
#undef QLEN
    for (int q = 0; q < nq; q++) kv_partial_merge(st + (size_t)q * sl, run + (size_t)q * sl, dv);
    free(S);
    free(U);
    free(run);
    free(Kt);
    return KV_OK;
}

int kv_attn_fold(const float *Q, int nq, const float *K, const float *V,
                 size_t n, int d, int dv, float scale, double *st)
{
    return fold_core(Q, nq, NULL, 0, K, V, n, d, dv, scale, st, nq >= 4);
}

/* slice size depends on n only: results independent of thread count */
static size_t slice_of(size_t n)
{
    size_t slice = 8192;
    while (n / slice > 256) slice *= 2;
    return slice;
}

int kv_attn_fold_par(const float *Q, int nq, const float *K, const float *V,
                     size_t n, int d, int dv, float scale, double *st)
{
    size_t slice = slice_of(n);
    size_t ns = (n + slice - 1) / slice;
    if (ns <= 1) return kv_attn_fold(Q, nq, K, V, n, d, dv, scale, st);
    size_t sl = KV_PSTATE_LEN(dv);
    double *part = malloc(sizeof(double) * ns * (size_t)nq * sl);
    if (!part) return KV_EINTERNAL;
    int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if (!omp_in_parallel())
    for (size_t i = 0; i < ns; i++) {
        double *p = part + i * (size_t)nq * sl;
        for (int q = 0; q < nq; q++) kv_partial_clear(p + (size_t)q * sl, dv);
        size_t a = i * slice, cnt = n - a < slice ? n - a : slice;
        bad |= kv_attn_fold(Q, nq, K + a * (size_t)d, V + a * (size_t)dv, cnt, d, dv, scale, p) != KV_OK;
    }
    for (size_t i = 0; i < ns; i++)
        for (int q = 0; q < nq; q++)
            kv_partial_merge(st + (size_t)q * sl, part + (i * (size_t)nq + q) * sl, dv);
    free(part);
    return bad ? KV_EINTERNAL : KV_OK;
}

int kv_attn_fold_multi(const float *Q, int nq, const size_t *len, const float *K, const float *V,
                       int d, int dv, float scale, double *st)
{
    if (nq <= 0 || len[nq - 1] == 0) return KV_OK;
    size_t n = len[nq - 1], slice = slice_of(n);
    size_t ns = (n + slice - 1) / slice;
    if (ns <= 1) return fold_core(Q, nq, len, 0, K, V, n, d, dv, scale, st, nq >= 4);
    size_t sl = KV_PSTATE_LEN(dv);
    double *part = malloc(sizeof(double) * ns * (size_t)nq * sl);
    int *first = malloc(sizeof(int) * ns); /* first query that reaches slice i */
    if (!part || !first) {
        free(part);
        free(first);
        return KV_EINTERNAL;
    }
    for (size_t i = 0, q = 0; i < ns; i++) {
        while (len[q] <= i * slice) q++; /* stops: len[nq - 1] = n > i * slice */
        first[i] = (int)q;
    }
    int bad = 0;
    /* later slices serve fewer queries: dynamic, each slice writes only its own states */
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad) if (!omp_in_parallel())
    for (size_t i = 0; i < ns; i++) {
        int q0 = first[i];
        double *p = part + (i * (size_t)nq + q0) * sl;
        for (int q = q0; q < nq; q++) kv_partial_clear(p + (size_t)(q - q0) * sl, dv);
        size_t a = i * slice, cnt = n - a < slice ? n - a : slice;
        bad |= fold_core(Q + (size_t)q0 * d, nq - q0, len + q0, a, K + a * (size_t)d, V + a * (size_t)dv, cnt, d, dv,
                         scale, p, nq >= 4) != KV_OK;
    }
    for (size_t i = 0; i < ns; i++)
        for (int q = first[i]; q < nq; q++)
            kv_partial_merge(st + (size_t)q * sl, part + (i * (size_t)nq + q) * sl, dv);
    free(part);
    free(first);
    return bad ? KV_EINTERNAL : KV_OK;
}
