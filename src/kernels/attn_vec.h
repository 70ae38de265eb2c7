/* attn_vec.h - the vector helpers of the exact kernels (private to
 * kernels/attn.c and kernels/attn_lanes.c): 16-float GNU vectors, their
 * loads and broadcasts, the lane max, the exp for x <= 0 that every
 * kernel shares, and the float to double fold of a tile's sums.  Static
 * inline: every function taking or returning these vectors is private to
 * its file, so no call crosses an ABI boundary (-Wpsabi's note does not
 * apply). */
#ifndef KVSTREAM_ATTN_VEC_H
#define KVSTREAM_ATTN_VEC_H

#include <stdint.h>
#include <string.h>
#include "kernels/lanes16.h"

#define VL 16    /* floats per vector */

/* see the top: -Wpsabi's note (clang and GCC, builds without AVX-512) does
 * not apply */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef kv_v16 v16;

static inline v16 ld(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v16 bc(float x) { return (v16){ x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x }; }

typedef kv_v16i v16i;
typedef float v8f __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));

/* x > m ? x : m by lane (NaN x: m; the lane max of a pass in order) */
static inline v16 vmax_first(v16 x, v16 m)
{
#if defined(__AVX512F__)
    return (v16)_mm512_max_ps((__m512)x, (__m512)m);
#else
    v16i gt = x > m;
    return (v16)((gt & (v16i)x) | (~gt & (v16i)m));
#endif
}

/* exp(x) for x <= 0, 16 at a time: 2^k * exp(r), r = x - k ln2 in
 * [-ln2/2, ln2/2] (ln2 in two parts, the first exact in a few bits),
 * exp(r) = 1 + r + r^2 p(r) with Cephes' degree-5 minimax p.  Worst
 * relative error over every float in [-87, 0]: 8.4e-8 with FMA, 8.2e-8
 * without (tests/test_expf.c checks 1e-7); x < -87, -inf included, gives 0.
 * Explicit vectors (GCC extensions) so every kernel gets the build's full
 * width and the same arithmetic (kv_expf_neg too). */
static inline v16 expv(v16 x)
{
    const v16 lo = bc(-87.0f);
    v16i under = x < lo; /* all ones where x < -87 */
    v16 v = vmax_first(lo, x); /* x < -87 ? -87 : x */
    /* round to nearest with the 1.5*2^23 trick: plain arithmetic */
    v16 kb = v * bc(1.44269504f) + bc(12582912.0f), k = kb - bc(12582912.0f);
    v16 r = v - k * bc(0.693359375f) + k * bc(2.12194440e-4f);
    v16 p = bc(1.9875691500e-4f);
    p = p * r + bc(1.3981999507e-3f);
    p = p * r + bc(8.3334519073e-3f);
    p = p * r + bc(4.1665795894e-2f);
    p = p * r + bc(1.6666665459e-1f);
    p = p * r + bc(5.0000001201e-1f);
    p = p * (r * r) + r + bc(1.0f);
    /* 2^k, k in [-126, 0] an integer: kb = 1.5 2^23 + k exactly, whose
     * bits are 0x4B400000 + k, so (k + 127) << 23 (a normal) without a
     * conversion */
    v16i ki = ((v16i)kb - (0x4B400000 - 127)) << 23;
    v16 e = p * (v16)ki;
    return (v16)((v16i)e & ~under);
}

/* u[c] += x[c] (double += float), c < n: the per-tile fold into the state */
static inline void add_f2d(double *restrict u, const float *restrict x, int n)
{
    int c = 0;
    for (; c + 8 <= n; c += 8) {
        v8f xf;
        v8d ud;
        memcpy(&xf, x + c, sizeof xf);
        memcpy(&ud, u + c, sizeof ud);
        ud += __builtin_convertvector(xf, v8d);
        memcpy(u + c, &ud, sizeof ud);
    }
    for (; c < n; c++) u[c] += x[c];
}

#endif
