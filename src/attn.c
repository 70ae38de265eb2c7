/* attn.c - exact attention kernels (tile: logits, max-shifted exp, P.V). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "attn.h"
#include "partial.h"

#define TILE 64    /* tokens per tile: K and V tiles stay in L1/L2 */
#define QBLK 4     /* queries sharing one pass over a key row */

void kv_expf_neg(float *x, size_t n)
{
    /* exp(x) = 2^k * exp(r), r = x - k ln2 in [-ln2/2, ln2/2]; degree-6
     * polynomial.  Branch-free so the compiler vectorises it. */
    for (size_t i = 0; i < n; i++) {
        float v = x[i] < -87.0f ? -87.0f : x[i];
        float k = __builtin_roundf(v * 1.44269504f);
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

/* logits S[q*TILE + t] = scale * <Q[q], K[t]> for a tile of nt tokens */
static void tile_logits(const float *restrict Q, int nq, const float *restrict K,
                        int nt, int d, float scale, float *restrict S)
{
    int q = 0;
    for (; q + QBLK <= nq; q += QBLK) {
        const float *q0 = Q + (size_t)q * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
        for (int t = 0; t < nt; t++) {
            const float *k = K + (size_t)t * d;
            float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (int c = 0; c < d; c++) {
                a0 += q0[c] * k[c];
                a1 += q1[c] * k[c];
                a2 += q2[c] * k[c];
                a3 += q3[c] * k[c];
            }
            S[(q + 0) * TILE + t] = a0 * scale;
            S[(q + 1) * TILE + t] = a1 * scale;
            S[(q + 2) * TILE + t] = a2 * scale;
            S[(q + 3) * TILE + t] = a3 * scale;
        }
    }
    for (; q < nq; q++) {
        const float *qq = Q + (size_t)q * d;
        for (int t = 0; t < nt; t++) {
            const float *k = K + (size_t)t * d;
            float a = 0;
#pragma omp simd reduction(+ : a)
            for (int c = 0; c < d; c++) a += qq[c] * k[c];
            S[q * TILE + t] = a * scale;
        }
    }
}

void kv_attn_fold(const float *Q, int nq, const float *K, const float *V,
                  size_t n, int d, int dv, float scale, double *st)
{
    if (n == 0 || nq == 0) return;
    size_t sl = KV_PSTATE_LEN(dv);
    float *S = malloc(sizeof(float) * (size_t)nq * TILE);
    float *acc = malloc(sizeof(float) * (size_t)dv);
    double *ts = malloc(sizeof(double) * sl);
    if (!S || !acc || !ts) abort(); /* a few KiB: treat as fatal */
    for (size_t t0 = 0; t0 < n; t0 += TILE) {
        int nt = (int)(n - t0 < TILE ? n - t0 : TILE);
        const float *Kt = K + t0 * (size_t)d, *Vt = V + t0 * (size_t)dv;
        tile_logits(Q, nq, Kt, nt, d, scale, S);
        for (int q = 0; q < nq; q++) {
            float *s = S + q * TILE;
            float mt = s[0];
            for (int t = 1; t < nt; t++) mt = s[t] > mt ? s[t] : mt;
            for (int t = 0; t < nt; t++) s[t] -= mt;
            kv_expf_neg(s, (size_t)nt);
            float l = 0, l2 = 0;
            for (int t = 0; t < nt; t++) { l += s[t]; l2 += s[t] * s[t]; }
            memset(acc, 0, sizeof(float) * (size_t)dv);
            for (int t = 0; t < nt; t++) {
                const float *v = Vt + (size_t)t * dv;
                float p = s[t];
#pragma omp simd
                for (int c = 0; c < dv; c++) acc[c] += p * v[c];
            }
            ts[KV_PS_M] = mt;
            ts[KV_PS_L] = l;
            ts[KV_PS_L2] = l2;
            for (int c = 0; c < dv; c++) ts[KV_PS_U + c] = acc[c];
            kv_partial_merge(st + (size_t)q * sl, ts, dv);
        }
    }
    free(S);
    free(acc);
    free(ts);
}

void kv_attn_fold_par(const float *Q, int nq, const float *K, const float *V,
                      size_t n, int d, int dv, float scale, double *st)
{
    /* slice size depends on n only: results independent of thread count */
    size_t slice = 8192;
    while (n / slice > 256) slice *= 2;
    size_t ns = (n + slice - 1) / slice;
    if (ns <= 1) { kv_attn_fold(Q, nq, K, V, n, d, dv, scale, st); return; }
    size_t sl = KV_PSTATE_LEN(dv);
    double *part = malloc(sizeof(double) * ns * (size_t)nq * sl);
    if (!part) abort();
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
    for (size_t i = 0; i < ns; i++) {
        double *p = part + i * (size_t)nq * sl;
        for (int q = 0; q < nq; q++) kv_partial_clear(p + (size_t)q * sl, dv);
        size_t a = i * slice, cnt = n - a < slice ? n - a : slice;
        kv_attn_fold(Q, nq, K + a * (size_t)d, V + a * (size_t)dv, cnt, d, dv, scale, p);
    }
    for (size_t i = 0; i < ns; i++)
        for (int q = 0; q < nq; q++)
            kv_partial_merge(st + (size_t)q * sl, part + (i * (size_t)nq + q) * sl, dv);
    free(part);
}
