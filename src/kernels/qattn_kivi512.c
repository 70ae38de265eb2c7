/* qattn_kivi512.c - the AVX-512 leaves of kernels/qattn_kivi.c (see
 * qattn_kivi_leaf.h).
 *
 * 2-bit codes are read a nibble (two codes, u + 4 v) at a time: vpermps
 * looks the 16 lanes' nibbles (the low 4 bits of each 32-bit lane, after
 * one shift) up in a 16-entry float table T[u + 4 v] = x u + y v held in a
 * register.  Keys (a token per lane, qattn.h's word layout): x, y = qs of a
 * channel pair, a table per pair and group, used by the group's G / 16
 * token vectors.  Values (a channel per lane, the channel words): x, y =
 * a of a token pair (weight times the token's group scale), a table per
 * pair and value group, used by its gv / 16 channel vectors.  One shift,
 * one permute and one add per two codes, against a mask, a conversion and
 * an FMA per code.  4- and 8-bit codes: masked in place, converted
 * unsigned (so the top code needs no shift either), times a factor that
 * carries 2^(-k b).  Macros where a shift count must be an immediate. */
#if defined(__AVX512F__)
#include <immintrin.h>
#include <string.h>
#include "kernels/qattn.h"
#include "kernels/qattn_kivi_leaf.h"

#define ALWAYS static inline __attribute__((always_inline))

/* per block of keys (nb per 32 tokens), per block of values (32 / b
 * tokens) of each 32 channels */
size_t kv_qk_pf_calls(const kv_qk_plan *p)
{
    return (size_t)(KV_QTILE / 32) * (size_t)p->nb + (size_t)((p->dv + 31) / 32) * (size_t)(KV_QTILE / (32 / p->bits));
}

float kv_qk_kscale(int bits, int c)
{
    if (bits == 2) return 1; /* the tables take the codes as they are */
    uint32_t x = (uint32_t)(127 - (c % (32 / bits)) * bits) << 23;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* 16 (zero point, scale) half pairs at x (the last m < 16 of n: from a
 * zeroed copy, nothing read past them) to floats: two 8-pair conversions,
 * then the even and odd floats apart */
static inline void halves16(const uint8_t *x, int m, __m512 *z, __m512 *s)
{
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                  od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    uint8_t last[64];
    if (m < 16) {
        memset(last, 0, sizeof last);
        x = memcpy(last, x, 4 * (size_t)m);
    }
    __m512 f0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)x)),
           f1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + 32)));
    *z = _mm512_permutex2var_ps(f0, ev, f1);
    *s = _mm512_permutex2var_ps(f0, od, f1);
}

/* U[e] = e & 3, V[e] = e >> 2: T = x U + y V */
#define TAB_U _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3)
#define TAB_V _mm512_setr_ps(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
#define TAB(x, y) _mm512_fmadd_ps(_mm512_set1_ps(y), V, _mm512_mul_ps(_mm512_set1_ps(x), U))
#define LOOK(w, n, T) _mm512_permutexvar_ps(_mm512_srli_epi32(w, 4 * (n)), T)

/* 2-bit keys, 32 tokens (two vectors w, x per block) or 16 */
#define K2(n, A, B)                                                                                          \
    do {                                                                                                   \
        __m512 T_ = TAB(q[2 * (n)], q[2 * (n) + 1]);                                                        \
        A = _mm512_add_ps(A, LOOK(w, n, T_));                                                               \
        if (two) B = _mm512_add_ps(B, LOOK(x, n, T_));                                                      \
    } while (0)

ALWAYS void keys2(const float *qs, float qz, const uint8_t *c, size_t bs, int nb, float *S, kv_qk_pf *pf, const int two)
{
    const __m512 U = TAB_U, V = TAB_V;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
    for (int j = 0; j < nb; j++) {
        const uint8_t *p = c + (size_t)j * bs;
        kv_qk_prefetch(pf);
        __m512i w = _mm512_loadu_si512(p), x = two ? _mm512_loadu_si512(p + 64) : w;
        const float *q = qs + 16 * j;
        K2(0, a0, b0);
        K2(1, a1, b1);
        K2(2, a0, b0);
        K2(3, a1, b1);
        K2(4, a0, b0);
        K2(5, a1, b1);
        K2(6, a0, b0);
        K2(7, a1, b1);
    }
    __m512 z = _mm512_set1_ps(qz);
    _mm512_storeu_ps(S, _mm512_add_ps(z, _mm512_add_ps(a0, a1)));
    if (two) _mm512_storeu_ps(S + 16, _mm512_add_ps(z, _mm512_add_ps(b0, b1)));
}

/* plane k of b-bit codes in 32-bit words: masked in place, as unsigned */
#define PLANE(w, k, b) _mm512_cvtepu32_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)(((1u << (b)) - 1) << ((k) * (b))))))

/* 4- and 8-bit keys: P planes of 32 (or 16) tokens, four chains each */
ALWAYS void keysp(const float *qs, float qz, const uint8_t *c, size_t bs, int nb, float *S, kv_qk_pf *pf,
                  const int two, const int b)
{
    const int P = 32 / b;
    __m512 a[4], x4[4];
    for (int i = 0; i < 4; i++) a[i] = x4[i] = _mm512_setzero_ps();
    for (int j = 0; j < nb; j++) {
        const uint8_t *p = c + (size_t)j * bs;
        kv_qk_prefetch(pf);
        __m512i w = _mm512_loadu_si512(p), x = two ? _mm512_loadu_si512(p + 64) : w;
        const float *q = qs + P * j;
#pragma GCC unroll 8
        for (int k = 0; k < P; k++) {
            __m512 qk = _mm512_set1_ps(q[k]);
            a[k & 3] = _mm512_fmadd_ps(PLANE(w, k, b), qk, a[k & 3]);
            if (two) x4[k & 3] = _mm512_fmadd_ps(PLANE(x, k, b), qk, x4[k & 3]);
        }
    }
    __m512 z = _mm512_set1_ps(qz);
    _mm512_storeu_ps(S, _mm512_add_ps(z, _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]))));
    if (two)
        _mm512_storeu_ps(S + 16,
                         _mm512_add_ps(z, _mm512_add_ps(_mm512_add_ps(x4[0], x4[1]), _mm512_add_ps(x4[2], x4[3]))));
}

void kv_qk_keys(const kv_qk_plan *p, const kv_qk_tile *tl, const float *x, const float *ksc, float *wk, float *S)
{
    int d = p->d, kq = p->kq, nb = p->nb;
    size_t bs = 4 * (size_t)p->G;
    float *qs = wk;
    for (int i = 0, off = 0; i < tl->ns; off += tl->n[i], i++) {
        const uint8_t *zs = tl->r[i] + p->kzs, *codes = tl->r[i] + 4 * (size_t)tl->t0[i];
        __m512 qz = _mm512_setzero_ps();
        for (int c = 0; c < kq; c += 16) { /* qs = x s ksc, qz = x . z (pairs past d: 0) */
            __m512 z, s, xv = _mm512_loadu_ps(x + c);
            if (c < d) halves16(zs + 4 * (size_t)c, d - c, &z, &s);
            else z = s = _mm512_setzero_ps();
            _mm512_storeu_ps(qs + c, _mm512_mul_ps(_mm512_mul_ps(xv, s), _mm512_loadu_ps(ksc + c)));
            qz = _mm512_fmadd_ps(xv, z, qz);
        }
        float z = _mm512_reduce_add_ps(qz);
        float *o = S + off;
        int t = 0, nt = tl->n[i];
        for (; t + 32 <= nt; t += 32) {
            switch (p->bits) {
            case 2: keys2(qs, z, codes + 4 * (size_t)t, bs, nb, o + t, tl->pf, 1); break;
            case 4: keysp(qs, z, codes + 4 * (size_t)t, bs, nb, o + t, tl->pf, 1, 4); break;
            default: keysp(qs, z, codes + 4 * (size_t)t, bs, nb, o + t, tl->pf, 1, 8); break;
            }
        }
        if (t < nt) switch (p->bits) {
            case 2: keys2(qs, z, codes + 4 * (size_t)t, bs, nb, o + t, tl->pf, 0); break;
            case 4: keysp(qs, z, codes + 4 * (size_t)t, bs, nb, o + t, tl->pf, 0, 4); break;
            default: keysp(qs, z, codes + 4 * (size_t)t, bs, nb, o + t, tl->pf, 0, 8); break;
            }
    }
}

/* Window k of a 16-token block's 16 nvg (token, group) pairs: lane l is
 * pair 16 k + l, token (16 k + l) / nvg, group (16 k + l) mod nvg.  a gets
 * w_t s_tj (4-, 8-bit: times 2^(-b (t mod 32/b)), the plane the value
 * leaf reads token t's code from); the w_t z_tj add up by lanes, window
 * by window, then per group in a fixed order. */
void kv_qk_weights(const kv_qk_plan *p, const kv_qk_tile *tl, const float *w, float *a, float *zl, float *zsum)
{
    int nvg = p->nvg, b = p->bits, B = 32 / b;
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m128i sh = _mm_cvtsi32_si128(__builtin_ctz((unsigned)nvg)), lb = _mm_cvtsi32_si128(__builtin_ctz((unsigned)b));
    __m512 ztot = _mm512_setzero_ps();
    for (int k = 0; k < nvg; k++) {
        __m512i idx = _mm512_srl_epi32(_mm512_add_epi32(iota, _mm512_set1_epi32(16 * k)), sh);
        __m512 sc = _mm512_set1_ps(1);
        if (b != 2) /* 2^(-b (t mod B)) by its exponent bits */
            sc = _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_sub_epi32(_mm512_set1_epi32(127), _mm512_sll_epi32(_mm512_and_si512(idx, _mm512_set1_epi32(B - 1)), lb)),
                23));
        __m512 zacc = _mm512_setzero_ps();
        for (int i = 0, t = 0; i < tl->ns; i++) {
            const uint8_t *zs = tl->r[i] + p->vzs + 4 * (size_t)tl->t0[i] * nvg;
            for (int x = 0; x < tl->n[i]; x += 16, t += 16) {
                __m512 we = _mm512_permutexvar_ps(idx, _mm512_loadu_ps(w + t)), z, s;
                size_t o = (size_t)x * nvg + 16 * (size_t)k;
                halves16(zs + 4 * o, 16, &z, &s);
                _mm512_storeu_ps(a + (size_t)t * nvg + 16 * (size_t)k, _mm512_mul_ps(_mm512_mul_ps(we, s), sc));
                zacc = _mm512_fmadd_ps(we, z, zacc);
            }
        }
        if (nvg <= 16) ztot = _mm512_add_ps(ztot, zacc);
        else _mm512_storeu_ps(zl + 16 * k, zacc);
    }
    if (nvg > 16) { /* each group's lanes in window order */
        for (int j = 0; j < nvg; j++) zsum[j] = 0;
        for (int e = 0; e < 16 * nvg; e++) zsum[e & (nvg - 1)] += zl[e];
        return;
    }
    /* lane l is group l mod nvg: lanes folded in halves down to nvg */
    if (nvg <= 8) ztot = _mm512_add_ps(ztot, _mm512_shuffle_f32x4(ztot, ztot, _MM_SHUFFLE(1, 0, 3, 2)));
    if (nvg <= 4) ztot = _mm512_add_ps(ztot, _mm512_shuffle_f32x4(ztot, ztot, _MM_SHUFFLE(2, 3, 0, 1)));
    if (nvg <= 2) ztot = _mm512_add_ps(ztot, _mm512_permute_ps(ztot, _MM_SHUFFLE(1, 0, 3, 2)));
    if (nvg <= 1) ztot = _mm512_add_ps(ztot, _mm512_permute_ps(ztot, _MM_SHUFFLE(2, 3, 0, 1)));
    _mm512_mask_storeu_ps(zsum, (__mmask16)((1u << nvg) - 1), ztot);
}

/* 2-bit values: per 16-token block, the 8 token-pair tables of group j,
 * then each of its (one or two) 16-channel vectors, two chains each */
#define V2(n, E, O)                                                                                          \
    do {                                                                                                   \
        E = _mm512_add_ps(E, LOOK(w0, n, T##n));                                                            \
        if (two) O = _mm512_add_ps(O, LOOK(w1, n, T##n));                                                   \
    } while (0)

ALWAYS void vals2(const float *a, const uint8_t *const *vc, const int *nn, int ns, int dv, float *acc, kv_qk_pf *pf,
                  const int nvg, const int two)
{
    const __m512 U = TAB_U, V = TAB_V;
    __m512 e0 = _mm512_loadu_ps(acc), o0 = _mm512_setzero_ps(), e1 = two ? _mm512_loadu_ps(acc + 16) : o0,
           o1 = o0;
    const float *ab = a;
    for (int i = 0; i < ns; i++)
        for (int blk = 0; blk < nn[i] / 16; blk++, ab += 16 * nvg) {
            const uint8_t *wp = vc[i] + 4 * (size_t)blk * dv;
            kv_qk_prefetch(pf);
            __m512i w0 = _mm512_loadu_si512(wp), w1 = two ? _mm512_loadu_si512(wp + 64) : w0;
            __m512 T0 = TAB(ab[0], ab[nvg]), T1 = TAB(ab[2 * nvg], ab[3 * nvg]), T2 = TAB(ab[4 * nvg], ab[5 * nvg]),
                   T3 = TAB(ab[6 * nvg], ab[7 * nvg]), T4 = TAB(ab[8 * nvg], ab[9 * nvg]),
                   T5 = TAB(ab[10 * nvg], ab[11 * nvg]), T6 = TAB(ab[12 * nvg], ab[13 * nvg]),
                   T7 = TAB(ab[14 * nvg], ab[15 * nvg]);
            V2(0, e0, e1);
            V2(1, o0, o1);
            V2(2, e0, e1);
            V2(3, o0, o1);
            V2(4, e0, e1);
            V2(5, o0, o1);
            V2(6, e0, e1);
            V2(7, o0, o1);
        }
    _mm512_storeu_ps(acc, _mm512_add_ps(e0, o0));
    if (two) _mm512_storeu_ps(acc + 16, _mm512_add_ps(e1, o1));
}

/* 4- and 8-bit values: per block of B = 32 / b tokens, plane k is token k */
ALWAYS void valsp(const float *a, const uint8_t *const *vc, const int *nn, int ns, int dv, float *acc, kv_qk_pf *pf,
                  const int nvg, const int two, const int b)
{
    const int B = 32 / b;
    __m512 e0 = _mm512_loadu_ps(acc), o0 = _mm512_setzero_ps(), e1 = two ? _mm512_loadu_ps(acc + 16) : o0,
           o1 = o0;
    const float *ab = a;
    for (int i = 0; i < ns; i++)
        for (int blk = 0; blk < nn[i] / B; blk++, ab += B * nvg) {
            const uint8_t *wp = vc[i] + 4 * (size_t)blk * dv;
            kv_qk_prefetch(pf);
            __m512i w0 = _mm512_loadu_si512(wp), w1 = two ? _mm512_loadu_si512(wp + 64) : w0;
#pragma GCC unroll 8
            for (int k = 0; k < B; k++) {
                __m512 ak = _mm512_set1_ps(ab[k * nvg]);
                if (k & 1) {
                    o0 = _mm512_fmadd_ps(PLANE(w0, k, b), ak, o0);
                    if (two) o1 = _mm512_fmadd_ps(PLANE(w1, k, b), ak, o1);
                } else {
                    e0 = _mm512_fmadd_ps(PLANE(w0, k, b), ak, e0);
                    if (two) e1 = _mm512_fmadd_ps(PLANE(w1, k, b), ak, e1);
                }
            }
        }
    _mm512_storeu_ps(acc, _mm512_add_ps(e0, o0));
    if (two) _mm512_storeu_ps(acc + 16, _mm512_add_ps(e1, o1));
}

/* one (or two) 16-channel vectors c of group j, bits, two and nvg constant per case */
#define VCASE(NVG)                                                                                           \
    switch (p->bits * 2 + two) {                                                                           \
    case 4: vals2(a + j, vcc, nn, ns, dv, acc + c, tl->pf, NVG, 0); break;                                          \
    case 5: vals2(a + j, vcc, nn, ns, dv, acc + c, tl->pf, NVG, 1); break;                                          \
    case 8: valsp(a + j, vcc, nn, ns, dv, acc + c, tl->pf, NVG, 0, 4); break;                                       \
    case 9: valsp(a + j, vcc, nn, ns, dv, acc + c, tl->pf, NVG, 1, 4); break;                                       \
    case 16: valsp(a + j, vcc, nn, ns, dv, acc + c, tl->pf, NVG, 0, 8); break;                                      \
    default: valsp(a + j, vcc, nn, ns, dv, acc + c, tl->pf, NVG, 1, 8); break;                                      \
    }

void kv_qk_values(const kv_qk_plan *p, const kv_qk_tile *tl, const float *a, float *acc)
{
    int dv = p->dv, gv = p->gv, nvg = p->nvg, ns = tl->ns, B = 32 / p->bits;
    const int *nn = tl->n;
    const uint8_t *vcc[KV_QK_SEGS];
    for (int j = 0; j < nvg; j++)
        for (int c = j * gv; c < (j + 1) * gv; c += 32) {
            int two = c + 32 <= (j + 1) * gv;
            for (int i = 0; i < ns; i++) vcc[i] = tl->r[i] + p->vco + ((size_t)(tl->t0[i] / B) * dv + c) * 4;
            switch (nvg) {
            case 1: VCASE(1); break;
            case 2: VCASE(2); break;
            case 4: VCASE(4); break;
            case 8: VCASE(8); break;
            default: VCASE(nvg); break;
            }
        }
}
#else
typedef int kv_qattn_kivi512_empty; /* ISO C wants a declaration in every file */
#endif
