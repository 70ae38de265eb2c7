/* held.c - attention over held rows with fixed-order logits (held.h).
 *
 * Per tile and query: the logits 8 keys at a time (kv_dot_fixed8:
 * kv_dot_fixed's lanes as one vector per key, the 8 trees at once), the
 * tile max into the running max, e = exp(a - m) 8 at a time in double,
 * then l, l2 and u = sum e v over the tile in double vectors (the values'
 * columns in register blocks, the tile's rows in order), added to the
 * state.  Keys and values are read once per call (a tile's rows stay in L1
 * across the queries of the call), the next tile's prefetched meanwhile. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include "core/kverr.h"
#include "kernels/held.h"
#include "kernels/partial.h"

/* Every function taking or returning these vectors is static to this file:
 * no call crosses an ABI boundary (-Wpsabi's note does not apply). */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef double v8d __attribute__((vector_size(8 * sizeof(double))));
typedef int64_t v8l __attribute__((vector_size(8 * sizeof(int64_t))));
typedef float v8f __attribute__((vector_size(8 * sizeof(float))));

#define T KV_HELD_TILE
_Static_assert(T % KV_DOT_BLK == 0 && T % 8 == 0, "tiles of whole key blocks and exp vectors");

#if defined(__AVX512F__)
#define PV_W 8 /* value vectors (8 doubles) per register block: 8 of 32 registers */
#elif defined(__AVX__)
#define PV_W 4 /* a v8d is 2 registers of 16 */
#else
#define PV_W 2 /* 4 of 16 */
#endif

static inline v8d bcd(double x) { return (v8d){ x, x, x, x, x, x, x, x }; }

/* exp(x) for x <= 0, 8 at a time: 2^k exp(r), k = round(x / ln2),
 * r = x - k ln2 in [-ln2/2, ln2/2] (ln2 in two parts, k ln2_hi exact),
 * exp(r) by its Taylor series to r^13 (truncation below 1e-17 relative),
 * Horner; about 1 ulp over [-708, 0] (tests/test_held.c checks 4 ulp
 * against libm).  x < -708 (-inf too) gives 0 (exp would be below 2^-1021:
 * nothing next to the tile max's weight of 1).  exp(0) is exactly 1. */
static inline v8d expd(v8d x)
{
    const v8d lo = bcd(-708.0), magic = bcd(6755399441055744.0); /* 1.5 2^52: rounds to an integer */
    v8l under = x < lo;
    x = (v8d)(((v8l)x & ~under) | ((v8l)lo & under));
    v8d kd = x * bcd(1.4426950408889634) + magic;
    v8d k = kd - magic;
    v8d r = (x - k * bcd(6.93147180369123816490e-01)) - k * bcd(1.90821492927058770002e-10);
    static const double c[14] = { 1.0 / 6227020800.0, 1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                  1.0 / 362880.0,     1.0 / 40320.0,     1.0 / 5040.0,       1.0 / 720.0,
                                  1.0 / 120.0,        1.0 / 24.0,        1.0 / 6.0,          0.5,
                                  1.0,                1.0 };
    v8d p = bcd(c[0]);
    for (int i = 1; i < 14; i++) p = p * r + bcd(c[i]);
    v8l ki = (v8l)kd - (v8l)magic; /* k, from the low bits of kd */
    v8d e = p * (v8d)((ki + 1023) << 52);
    return (v8d)((v8l)e & ~under);
}

/* The next tile's rows, prefetched a row of each per row of this tile's
 * P.V (kv_attn_held), or its keys 8 rows per block of logits
 * (kv_held_logits): spread over the work, as in one burst the requests
 * stall on the miss buffers, and the hardware prefetchers alone keep a loop
 * that alternates loads and arithmetic well below the read rate.  k NULL:
 * none. */
typedef struct {
    const char *k, *v;
    size_t kb, vb; /* row bytes */
    int n;         /* rows */
} pfnext;

static inline void pf_row(const char *p, size_t bytes)
{
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
}

/* s[t] = kv_held_logit(q, K + t d) as a float, t < nt; s has room for nt
 * rounded up to KV_DOT_BLK (a short last block repeats its last key).
 * pf.k: the next tile's keys, as many rows prefetched per block. */
static void tile_logits(const float *q, const float *K, int nt, int d, float scale, float *s, pfnext pf)
{
    for (int t = 0; t < nt; t += KV_DOT_BLK) {
        for (int i = t; pf.k && i < t + KV_DOT_BLK && i < pf.n; i++) pf_row(pf.k + (size_t)i * pf.kb, pf.kb);
        const float *x[KV_DOT_BLK];
        for (int i = 0; i < KV_DOT_BLK; i++) x[i] = K + (size_t)(t + i < nt ? t + i : nt - 1) * d;
        kv_dot_v8 o;
        kv_dot_fixed8(q, x, d, &o);
        o *= scale;
        memcpy(s + t, &o, sizeof o);
    }
}

void kv_held_logits(const float *Q, int nq, const float *K, size_t n, int d, double scale, double *lg, size_t ld)
{
    float s[T];
    for (size_t a = 0; a < n; a += T) {
        int nt = n - a < T ? (int)(n - a) : T;
        size_t b = a + T < n ? a + T : n; /* the next tile: its keys prefetched by the first query */
        pfnext pf = { (const char *)(K + b * (size_t)d), NULL, sizeof(float) * (size_t)d, 0,
                      n - b < T ? (int)(n - b) : T };
        for (int q = 0; q < nq; q++, pf.k = NULL) {
            tile_logits(Q + (size_t)q * d, K + a * d, nt, d, (float)scale, s, pf);
            for (int t = 0; t < nt; t++) lg[(size_t)q * ld + a + (size_t)t] = (double)s[t];
        }
    }
}

/* u[c] += sum_t e[t] V[t][c] for the columns [c, c + 8 W), the tile's rows
 * in order into W double vectors.  W a constant at each call. */
static inline __attribute__((always_inline)) void pv_cols(const double *e, const float *V, int nt, int dv, int c,
                                                          int W, double *u, pfnext pf)
{
    v8d a[PV_W];
    for (int i = 0; i < W; i++) a[i] = bcd(0);
    for (int t = 0; t < nt; t++) {
        if (pf.k && t < pf.n) {
            pf_row(pf.k + (size_t)t * pf.kb, pf.kb);
            pf_row(pf.v + (size_t)t * pf.vb, pf.vb);
        }
        const float *v = V + (size_t)t * dv + c;
        v8d w = bcd(e[t]);
        for (int i = 0; i < W; i++) a[i] += w * kv_ld8d(v + 8 * i); /* dot.h */
    }
    for (int i = 0; i < W; i++) {
        v8d y;
        memcpy(&y, u + c + 8 * i, sizeof y);
        y += a[i];
        memcpy(u + c + 8 * i, &y, sizeof y);
    }
}

/* u += e . V over the tile; pf: prefetch during the first column block */
static void pv(const double *e, const float *V, int nt, int dv, double *u, pfnext pf)
{
    const pfnext none = { NULL, NULL, 0, 0, 0 };
    int c = 0;
    for (; c + 8 * PV_W <= dv; c += 8 * PV_W, pf = none) pv_cols(e, V, nt, dv, c, PV_W, u, pf);
    for (; c + 8 <= dv; c += 8, pf = none) pv_cols(e, V, nt, dv, c, 1, u, pf);
    if (pf.k) /* no column block: prefetch here */
        for (int t = 0; t < pf.n; t++) {
            pf_row(pf.k + (size_t)t * pf.kb, pf.kb);
            pf_row(pf.v + (size_t)t * pf.vb, pf.vb);
        }
    for (; c < dv; c++) {
        double a = 0;
        for (int t = 0; t < nt; t++) a += e[t] * V[(size_t)t * dv + c];
        u[c] += a;
    }
}

/* max of s[0..n), 8 lanes (a max is exact: any order gives it) */
static inline float tile_max(const float *s, int n)
{
    typedef int32_t v8i __attribute__((vector_size(8 * sizeof(int32_t))));
    v8f m = { -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY }, y;
    int t = 0;
    for (; t + 8 <= n; t += 8) {
        memcpy(&y, s + t, sizeof y);
        v8i gt = y > m;
        m = (v8f)(((v8i)y & gt) | ((v8i)m & ~gt));
    }
    float r = m[0];
    for (int i = 1; i < 8; i++) r = m[i] > r ? m[i] : r;
    for (; t < n; t++) r = s[t] > r ? s[t] : r;
    return r;
}

static inline double hsum8(v8d s) { return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])); }

static void fold(const float *Q, int nq, const float *K, const float *V, int nt, int d, int dv, double scale,
                 double *st, pfnext pf)
{
    size_t sl = KV_PSTATE_LEN(dv);
    float s[T];
    double e[T];
    if (nt <= 0) return;
    for (int q = 0; q < nq; q++) {
        double *x = st + (size_t)q * sl;
        tile_logits(Q + (size_t)q * d, K, nt, d, (float)scale, s, (pfnext){ NULL, NULL, 0, 0, 0 });
        float mt = tile_max(s, nt);
        double m = kv_partial_raise_max(x, mt, dv);
        int n8 = (nt + 7) / 8 * 8;
        for (int t = 0; t < n8; t++) e[t] = t < nt ? (double)s[t] - m : -INFINITY; /* pads: weight 0 */
        v8d l = bcd(0), l2 = bcd(0);
        for (int t = 0; t < n8; t += 8) {
            v8d y;
            memcpy(&y, e + t, sizeof y);
            y = expd(y);
            memcpy(e + t, &y, sizeof y);
            l += y;
            l2 += y * y;
        }
        x[KV_PS_L] += hsum8(l);
        x[KV_PS_L2] += hsum8(l2);
        pv(e, V, nt, dv, x + KV_PS_U, pf);
        pf.k = NULL; /* once per tile */
    }
}

void kv_held_fold(const float *Q, int nq, const float *K, const float *V, int nt, int d, int dv, double scale,
                  double *st)
{
    const pfnext none = { NULL, NULL, 0, 0, 0 };
    fold(Q, nq, K, V, nt, d, dv, scale, st, none);
}

int kv_attn_held(const float *Q, int nq, const float *K, const float *V, size_t n, int d, int dv, double scale,
                 double *st)
{
    size_t sl = KV_PSTATE_LEN(dv);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    for (size_t a = 0; a < n; a += T) {
        int nt = n - a < T ? (int)(n - a) : T;
        size_t b = a + T < n ? a + T : n; /* the next tile */
        pfnext pf = { (const char *)(K + b * (size_t)d), (const char *)(V + b * (size_t)dv), sizeof(float) * (size_t)d,
                      sizeof(float) * (size_t)dv, n - b < T ? (int)(n - b) : T };
        fold(Q, nq, K + a * (size_t)d, V + a * (size_t)dv, nt, d, dv, scale, st, pf);
    }
    return KV_OK;
}
