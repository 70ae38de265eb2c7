/* qattn.c - attention over quantised tiles (see qattn.h). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include "core/kverr.h"
#include "kernels/attn.h"
#include "kernels/partial.h"
#include "kernels/qattn.h"
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Every function taking or returning these vectors is static to this file. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef unsigned char v8u8 __attribute__((vector_size(8)));

static inline v8f ld8(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
static inline void st8(float *p, v8f v) { memcpy(p, &v, sizeof v); }
static inline v8f bc8(float x) { return (v8f){ x, x, x, x, x, x, x, x }; }

/* A unit's 8 bytes widened to 32-bit lanes (x86 has no byte shifts, and
 * GCC scalarises a vector conversion from bytes: vpmovzxbd by hand). */
static inline v8i unit_at(const uint8_t *c)
{
#ifdef __AVX2__
    __m256i x = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)c));
    v8i v;
    memcpy(&v, &x, sizeof v);
    return v;
#else
    return (v8i){ c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7] };
#endif
}

/* plane k of a widened unit, as code * 2^(k b): a mask, no shift */
static inline v8f plane(v8i x, int bits, int k)
{
    if (bits == 8) return __builtin_convertvector(x, v8f); /* a widened byte needs no mask */
    int m = ((1 << bits) - 1) << (k * bits);
    return __builtin_convertvector(x & (v8i){ m, m, m, m, m, m, m, m }, v8f);
}

/* The key units: KV_QUB lanes (vq) per unit, one widening per unit. */
#if KV_QUB == 16
typedef float vq __attribute__((vector_size(64)));
typedef int vqi __attribute__((vector_size(64)));

static inline vqi unitq(const uint8_t *c) /* vpmovzxbd of 16 bytes */
{
    __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c));
    vqi v;
    memcpy(&v, &x, sizeof v);
    return v;
}

static inline float sumq(vq s)
{
    return (((s[0] + s[8]) + (s[4] + s[12])) + ((s[1] + s[9]) + (s[5] + s[13]))) +
           (((s[2] + s[10]) + (s[6] + s[14])) + ((s[3] + s[11]) + (s[7] + s[15])));
}
#else
typedef v8f vq;
typedef v8i vqi;
static inline vqi unitq(const uint8_t *c) { return unit_at(c); }
static inline float sumq(vq s) { return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])); }
#endif

static inline vq ldq(const float *p) { vq v; memcpy(&v, p, sizeof v); return v; }

static inline vq planeq(vqi x, int bits, int k)
{
    if (bits == 8) return __builtin_convertvector(x, vq);
    vqi m = { 0 };
    m += ((1 << bits) - 1) << (k * bits);
    return __builtin_convertvector(x & m, vq);
}

/* kv_qdot_codes for a constant bits (inlined per case: the plane loop
 * unrolls); two accumulators, by plane parity (by unit parity at 8 bits) */
static inline float dot_codes(const float *qs, const uint8_t *c, int units, const int bits)
{
    const int planes = 8 / bits, U = KV_QUB;
    vq a0 = { 0 }, a1 = { 0 };
    if (planes == 1) {
        int u = 0;
        for (; u + 2 <= units; u += 2) {
            a0 += planeq(unitq(c + U * u), 8, 0) * ldq(qs + U * u);
            a1 += planeq(unitq(c + U * u + U), 8, 0) * ldq(qs + U * u + U);
        }
        if (u < units) a0 += planeq(unitq(c + U * u), 8, 0) * ldq(qs + U * u);
    } else
        for (int u = 0; u < units; u++) {
            vqi x = unitq(c + U * u);
            const float *q = qs + (size_t)u * U * planes;
            for (int k = 0; k < planes; k += 2) {
                a0 += planeq(x, bits, k) * ldq(q + U * k);
                a1 += planeq(x, bits, k + 1) * ldq(q + U * k + U);
            }
        }
    return sumq(a0 + a1);
}

float kv_qdot_codes(const float *qs, const uint8_t *codes, int bits, int n)
{
    switch (bits) {
    case 2: return dot_codes(qs, codes, n / (4 * KV_QUB), 2);
    case 4: return dot_codes(qs, codes, n / (2 * KV_QUB), 4);
    default: return dot_codes(qs, codes, n / KV_QUB, 8);
    }
}

float kv_qdot(const float *a, const float *b, int n)
{
    v8f s0 = bc8(0), s1 = bc8(0), s2 = bc8(0), s3 = bc8(0);
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 += ld8(a + i) * ld8(b + i);
        s1 += ld8(a + i + 8) * ld8(b + i + 8);
        s2 += ld8(a + i + 16) * ld8(b + i + 16);
        s3 += ld8(a + i + 24) * ld8(b + i + 24);
    }
    for (; i + 8 <= n; i += 8) s0 += ld8(a + i) * ld8(b + i);
    float t = 0;
    for (; i < n; i++) t += a[i] * b[i];
    v8f s = (s0 + s1) + (s2 + s3);
    return (((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))) + t;
}

void kv_qlogits_codes(const float *qs, float qz, const uint8_t *codes, size_t stride, int bits, int n, int nt,
                      float *S)
{
    switch (bits) { /* the same arithmetic as kv_qdot_codes, its switch hoisted */
    case 2: for (int t = 0; t < nt; t++) S[t] = qz + dot_codes(qs, codes + t * stride, n / (4 * KV_QUB), 2); break;
    case 4: for (int t = 0; t < nt; t++) S[t] = qz + dot_codes(qs, codes + t * stride, n / (2 * KV_QUB), 4); break;
    default: for (int t = 0; t < nt; t++) S[t] = qz + dot_codes(qs, codes + t * stride, n / KV_QUB, 8); break;
    }
}


/* U (layout order) = sum_t A[t][group] plane codes, 8 pieces of 8 lanes
 * at a time in registers, tokens inner; bits constant per inlined case */
static inline void vals_codes(float *U, const float *A, int nvg, const uint8_t *codes, size_t cstride, int nt, int np,
                              const int *gp, const int bits)
{
    /* layout piece k (8 lanes): unit k / (planes KV_QUB/8), plane, and which
     * 8 bytes of the unit (kv_qperm) */
    const int planes = 8 / bits, halves = KV_QUB / 8;
#define PIECE(k, off, pl)                                                                     \
    do {                                                                                      \
        int r_ = (k) % (planes * halves);                                                     \
        off = (k) / (planes * halves) * KV_QUB + 8 * (r_ % halves);                           \
        pl = r_ / halves;                                                                     \
    } while (0)
    int k0 = 0;
    for (; k0 + 8 <= np; k0 += 8) {
        v8f acc[8];
        int g[8], off[8], pl[8];
        for (int p = 0; p < 8; p++) {
            acc[p] = bc8(0);
            g[p] = gp[k0 + p];
            PIECE(k0 + p, off[p], pl[p]);
        }
        for (int t = 0; t < nt; t++) {
            const uint8_t *c = codes + (size_t)t * cstride;
            const float *a = A + (size_t)t * nvg;
            for (int p = 0; p < 8; p++) acc[p] += bc8(a[g[p]]) * plane(unit_at(c + off[p]), bits, pl[p]);
        }
        for (int p = 0; p < 8; p++) st8(U + 8 * (k0 + p), acc[p]);
    }
    for (; k0 < np; k0++) { /* fewer than 64 lanes left */
        v8f acc = bc8(0);
        int off, k, g = gp[k0];
        PIECE(k0, off, k);
        for (int t = 0; t < nt; t++)
            acc += bc8(A[(size_t)t * nvg + g]) * plane(unit_at(codes + (size_t)t * cstride + off), bits, k);
        st8(U + 8 * k0, acc);
    }
#undef PIECE
}

void kv_qfold_tile(double *r, float *s, int nt, const kv_qtile_vals *tv, float *U, float *Z)
{
    int dv = tv->dv;
    if (nt <= 0) return;
    float mt = s[0];
    for (int t = 1; t < nt; t++) mt = s[t] > mt ? s[t] : mt;
    float m = kv_partial_raise_max(r, mt, dv);
    for (int t = 0; t < nt; t++) s[t] -= m;
    kv_expf_neg(s, (size_t)nt);
    float l = 0, l2 = 0;
    for (int t = 0; t < nt; t++) {
        l += s[t];
        l2 += s[t] * s[t];
    }
    r[KV_PS_L] += l;
    r[KV_PS_L2] += l2;
    double *u = r + KV_PS_U;
    memset(U, 0, sizeof(float) * (size_t)dv);
    if (!tv->coded) { /* 64 channels at a time in registers, tokens inner */
        int c0 = 0;
        for (; c0 + 64 <= dv; c0 += 64) {
            v8f acc[8];
            for (int k = 0; k < 8; k++) acc[k] = bc8(0);
            for (int t = 0; t < nt; t++) {
                const float *v = tv->v + (size_t)t * dv + c0;
                v8f w = bc8(s[t]);
                for (int k = 0; k < 8; k++) acc[k] += w * ld8(v + 8 * k);
            }
            for (int k = 0; k < 8; k++) st8(U + c0 + 8 * k, acc[k]);
        }
        for (int t = 0; t < nt && c0 < dv; t++) {
            const float *v = tv->v + (size_t)t * dv;
            for (int c = c0; c < dv; c++) U[c] += s[t] * v[c];
        }
        for (int c = 0; c < dv; c++) u[c] += U[c];
        return;
    }
    /* coded: U[p] += sum_t (w_t s_tj) code_tp (times 2^(k b), see
     * kv_qplane_scale), Z[j] = sum_t w_t z_tj */
    int nvg = tv->nvg, np = dv / 8;
    float *A = Z + nvg;
    for (int j = 0; j < nvg; j++) { /* in registers: a sum through memory is a store-forward chain */
        float z = 0;
        for (int t = 0; t < nt; t++) {
            A[(size_t)t * nvg + j] = s[t] * tv->vs[(size_t)t * nvg + j];
            z += s[t] * tv->vz[(size_t)t * nvg + j];
        }
        Z[j] = z;
    }
    switch (tv->bits) {
    case 2: vals_codes(U, A, nvg, tv->codes, tv->cstride, nt, np, tv->gp, 2); break;
    case 4: vals_codes(U, A, nvg, tv->codes, tv->cstride, nt, np, tv->gp, 4); break;
    default: vals_codes(U, A, nvg, tv->codes, tv->cstride, nt, np, tv->gp, 8); break;
    }
    for (int k = 0; k < np; k++) { /* the state stays in layout order (kv_qstate_merge) */
        double z = Z[tv->gp[k]];
        for (int i = 0; i < 8; i++) u[8 * k + i] += (double)U[8 * k + i] * tv->pl[8 * k + i] + z;
    }
}

void kv_qstate_merge(double *st, const double *rl, const int *perm, int dv, double *tmp)
{
    tmp[KV_PS_M] = rl[KV_PS_M];
    tmp[KV_PS_L] = rl[KV_PS_L];
    tmp[KV_PS_L2] = rl[KV_PS_L2];
    for (int p = 0; p < dv; p++) tmp[KV_PS_U + (perm ? perm[p] : p)] = rl[KV_PS_U + p];
    kv_partial_merge(st, tmp, dv);
}

int kv_qscratch_slots(kv_qscratch *w)
{
    int need = omp_get_max_threads() + omp_get_thread_num() + 1;
    if (need <= w->n) return KV_OK;
    float **b = realloc(w->buf, sizeof(float *) * (size_t)need);
    if (!b) return KV_EINTERNAL;
    w->buf = b;
    size_t *c = realloc(w->cap, sizeof(size_t) * (size_t)need);
    if (!c) return KV_EINTERNAL;
    w->cap = c;
    for (int i = w->n; i < need; i++) {
        w->buf[i] = NULL;
        w->cap[i] = 0;
    }
    w->n = need;
    return KV_OK;
}

float *kv_qscratch_get(kv_qscratch *w, size_t n)
{
    int t = omp_get_thread_num();
    if (t >= w->n) return NULL; /* kv_qscratch_slots was not called: a bug */
    if (n > w->cap[t]) {
        size_t c = w->cap[t] ? w->cap[t] : 1024;
        while (c < n) c *= 2;
        float *b = realloc(w->buf[t], sizeof(float) * c);
        if (!b) return NULL;
        w->buf[t] = b;
        w->cap[t] = c;
    }
    return w->buf[t];
}

size_t kv_qscratch_bytes(const kv_qscratch *w)
{
    size_t b = 0;
    for (int i = 0; i < w->n; i++) b += w->cap[i] * sizeof(float);
    return b;
}

void kv_qscratch_free(kv_qscratch *w)
{
    for (int i = 0; i < w->n; i++) free(w->buf[i]);
    free(w->buf);
    free(w->cap);
    memset(w, 0, sizeof *w);
}
