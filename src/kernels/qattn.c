/* qattn.c - attention over quantised tiles (see qattn.h). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include "core/kverr.h"
#include "kernels/attn.h"
#include "kernels/partial.h"
#include "kernels/qattn.h"
#include "kernels/vshuf.h"
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Every function taking or returning these vectors is static to this file. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float vf __attribute__((vector_size(4 * KV_QVL)));
typedef int vi __attribute__((vector_size(4 * KV_QVL)));
typedef unsigned vu __attribute__((vector_size(4 * KV_QVL)));
typedef float v8f __attribute__((vector_size(32)));

static inline v8f ld8(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
static inline void st8(float *p, v8f v) { memcpy(p, &v, sizeof v); }
static inline v8f bc8(float x) { return (v8f){ 0 } + x; }
static inline vf ldf(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vi ldw(const uint8_t *p) { vi v; memcpy(&v, p, sizeof v); return v; }
static inline vf bcf(float x) { return (vf){ 0 } + x; }

/* plane k of P = 32 / b of a vector of words w, its high half h = w >> 16
 * (qattn.h, kv_qword_scale): masked in place, code 2^(j b) for j = k mod
 * P/2, exact in float (and never a negative int); P/2 masks, so they stay
 * in registers beside P accumulators */
static inline vf plane(vi w, vi h, int bits, int k)
{
    int j = k % (16 / bits);
    return __builtin_convertvector((k < 16 / bits ? w : h) & (((1 << bits) - 1) << (j * bits)), vf);
}

static inline vi high(vi w) { return (vi)((vu)w >> 16); }

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

/* KV_QVL tokens' logits (n <= KV_QVL valid): four chains by plane, blocks
 * then planes in order; bits constant per inlined case */
static inline void logits_vec(const float *qs, float qz, const uint8_t *c, size_t bstride, int nb, int n, float *S,
                              const int bits)
{
    const int P = 32 / bits;
    vf a[4] = { { 0 }, { 0 }, { 0 }, { 0 } };
    for (int j = 0; j < nb; j++) {
        vi w = { 0 };
        if (n == KV_QVL) w = ldw(c + (size_t)j * bstride);
        else memcpy(&w, c + (size_t)j * bstride, 4 * (size_t)n); /* a group's last few tokens */
        const float *q = qs + (size_t)j * P;
        vi h = high(w);
        for (int k = 0; k < P; k++) a[k & 3] += plane(w, h, bits, k) * bcf(q[k]);
    }
    vf r = bcf(qz) + ((a[0] + a[1]) + (a[2] + a[3]));
    memcpy(S, &r, 4 * (size_t)n);
}

/* 2 KV_QVL tokens' logits, all valid: logits_vec's arithmetic for each
 * half, interleaved (eight independent chains) */
static inline void logits_vec2(const float *qs, float qz, const uint8_t *c, size_t bstride, int nb, float *S,
                               const int bits)
{
    const int P = 32 / bits;
    vf a[4] = { { 0 }, { 0 }, { 0 }, { 0 } }, b[4] = { { 0 }, { 0 }, { 0 }, { 0 } };
    for (int j = 0; j < nb; j++) {
        vi w = ldw(c + (size_t)j * bstride), x = ldw(c + (size_t)j * bstride + 4 * KV_QVL);
        const float *q = qs + (size_t)j * P;
        vi h = high(w), hx = high(x);
        for (int k = 0; k < P; k++) {
            vf qk = bcf(q[k]);
            a[k & 3] += plane(w, h, bits, k) * qk;
            b[k & 3] += plane(x, hx, bits, k) * qk;
        }
    }
    vf r = bcf(qz) + ((a[0] + a[1]) + (a[2] + a[3])), r2 = bcf(qz) + ((b[0] + b[1]) + (b[2] + b[3]));
    memcpy(S, &r, sizeof r);
    memcpy(S + KV_QVL, &r2, sizeof r2);
}

void kv_qlogits_words(const float *qs, float qz, const uint8_t *codes, int G, int nb, int bits, int nt, float *S)
{
    size_t bs = 4 * (size_t)G;
    int t = 0;
    for (; t + 2 * KV_QVL <= nt; t += 2 * KV_QVL) switch (bits) {
        case 2: logits_vec2(qs, qz, codes + 4 * (size_t)t, bs, nb, S + t, 2); break;
        case 4: logits_vec2(qs, qz, codes + 4 * (size_t)t, bs, nb, S + t, 4); break;
        default: logits_vec2(qs, qz, codes + 4 * (size_t)t, bs, nb, S + t, 8); break;
        }
    for (; t < nt; t += KV_QVL) {
        int n = nt - t < KV_QVL ? nt - t : KV_QVL;
        switch (bits) {
        case 2: logits_vec(qs, qz, codes + 4 * (size_t)t, bs, nb, n, S + t, 2); break;
        case 4: logits_vec(qs, qz, codes + 4 * (size_t)t, bs, nb, n, S + t, 4); break;
        default: logits_vec(qs, qz, codes + 4 * (size_t)t, bs, nb, n, S + t, 8); break;
        }
    }
}

/* the 32-bit words at p + l stride, l < KV_QVL (a gather instruction
 * where there is one: lanes built through memory stall on store forwarding) */
static inline vi gather_words(const uint8_t *p, int stride)
{
    vi w;
#if defined(__AVX2__) || defined(__AVX512F__)
    vi idx;
    for (int l = 0; l < KV_QVL; l++) idx[l] = l * stride;
#endif
#if defined(__AVX512F__)
    __m512i i, x;
    memcpy(&i, &idx, sizeof i);
    x = _mm512_i32gather_epi32(i, p, 1);
    memcpy(&w, &x, sizeof w);
#elif defined(__AVX2__)
    __m256i i, x;
    memcpy(&i, &idx, sizeof i);
    x = _mm256_i32gather_epi32((const int *)p, i, 1);
    memcpy(&w, &x, sizeof w);
#else
    for (int l = 0; l < KV_QVL; l++) {
        int32_t x;
        memcpy(&x, p + (size_t)l * stride, 4);
        w[l] = x;
    }
#endif
    return w;
}

/* the 2 nb nibbles of a vector of sign words w (bytes j.. of each lane's
 * row), looked up by shuffles from their 16-entry tables (one in a register
 * under AVX-512, two halves otherwise; the shuffle reads the index's low 4
 * bits) into two chains, alternately */
static inline void sign_nibbles(const float *T, vi w, int j, int nb, vf *a0, vf *a1)
{
    for (int x = 0; x < 2 * nb; x++) {
        const float *t = T + (size_t)(2 * j + x) * 16;
        vi idx = (vi)((vu)w >> (4 * x)) & 15;
#if KV_QVL == 16
        vf v = KV_SHUF1(ldf(t), idx);
#else
        vf v = KV_SHUF2(ldf(t), ldf(t + 8), idx);
#endif
        if (x & 1) *a1 += v;
        else *a0 += v;
    }
}

/* KV_QVL tokens' sign sums (n <= KV_QVL valid): a 4-byte word per token
 * at a time, its nibbles by sign_nibbles.  Under AVX-512 (mb >= 8) the
 * words come from two 8-lane gathers of 8 bytes split into two word
 * vectors (half the gathered elements of word gathers); else a word
 * gather, or byte copies for a part vector.  A row's last bytes come from
 * the word (or 8 bytes) ending at its end, shifted down, never past it;
 * the sums are the same in every case. */
static inline void signs_vec(const float *T, const uint8_t *sig, int mb, int n, float *S)
{
    vf a0 = bcf(0), a1 = bcf(0);
#if defined(__AVX512F__)
    if (n == KV_QVL && mb >= 8) {
        const __m256i i8 = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(mb));
        const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
                      od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        for (int j = 0; j < mb; j += 8) {
            int nb = mb - j < 8 ? mb - j : 8;
            const uint8_t *p = sig + j + nb - 8;
            __m512i g0 = _mm512_i32gather_epi64(i8, p, 1), g1 = _mm512_i32gather_epi64(i8, p + 8 * (size_t)mb, 1);
            if (nb < 8) {
                __m128i c = _mm_cvtsi32_si128(8 * (8 - nb));
                g0 = _mm512_srl_epi64(g0, c);
                g1 = _mm512_srl_epi64(g1, c);
            }
            __m512i lo = _mm512_permutex2var_epi32(g0, ev, g1), hi = _mm512_permutex2var_epi32(g0, od, g1);
            vi w;
            memcpy(&w, &lo, sizeof w);
            sign_nibbles(T, w, j, nb < 4 ? nb : 4, &a0, &a1);
            if (nb > 4) {
                memcpy(&w, &hi, sizeof w);
                sign_nibbles(T, w, j + 4, nb - 4, &a0, &a1);
            }
        }
        vf r = a0 + a1;
        memcpy(S, &r, sizeof r);
        return;
    }
#endif
    for (int j = 0; j < mb; j += 4) {
        vi w = { 0 };
        int nb = mb - j < 4 ? mb - j : 4;
        if (n == KV_QVL && mb >= 4) { /* a row's last nb < 4 bytes: the word ending there, shifted down */
            w = gather_words(sig + j + nb - 4, mb);
            if (nb < 4) w = (vi)((vu)w >> (8 * (4 - nb)));
        } else
            for (int l = 0; l < n; l++) { /* little-endian: byte j in bits 0-7 */
                uint32_t x = 0;
                memcpy(&x, sig + (size_t)l * mb + j, (size_t)nb);
                w[l] = (int)x;
            }
        sign_nibbles(T, w, j, nb, &a0, &a1);
    }
    vf r = a0 + a1;
    memcpy(S, &r, 4 * (size_t)n);
}

void kv_qsigns(const float *T, const uint8_t *sig, int mb, int nt, float *S)
{
    for (int t = 0; t < nt; t += KV_QVL)
        signs_vec(T, sig + (size_t)t * mb, mb, nt - t < KV_QVL ? nt - t : KV_QVL, S + t);
}

void kv_qsign_tables(const float *y, int mb, float *T)
{
    for (int n = 0; n < 2 * mb; n++) { /* T[v] = sum of y over the set bits of v */
        float *t = T + (size_t)n * 16;
        t[0] = 0;
        for (int v = 1; v < 16; v++) t[v] = t[v & (v - 1)] + y[4 * n + __builtin_ctz((unsigned)v)];
    }
}

/* The lanes of sum_t (w_t s_tg) code_tc for the nt tokens (W words each,
 * contiguous) added to the pending floats U, one vector accumulator per plane (kv_qlanes, planes
 * of KV_QVL lanes per piece), then one more per piece of sum_t w_t z_tg
 * (each word lane carries its group's).  A vector is KV_QVL consecutive
 * words: KV_QVL / W tokens when W < KV_QVL (the weights and group scales
 * spread to the lanes by shuffles, lanes past the tile zeroed), else piece
 * m of one token.  w, vs and vz are read KV_QVL floats past the tile. */
static inline void vals_words(float *U, const float *w, const kv_qtile_vals *tv, int nt, vi tix, vi gix, const int bits)
{
    const int P = 32 / bits;
    int W = tv->dv / P, wpg = tv->gv / P, nvg = tv->nvg, pieces = W < KV_QVL ? 1 : W / KV_QVL;
    for (int m = 0; m < pieces; m++) {
        vf acc[32 / 2 + 1];
        for (int k = 0; k <= P; k++) acc[k] = ldf(U + (size_t)(m * (P + 1) + k) * KV_QVL);
        if (W < KV_QVL) {
            int step = KV_QVL / W;
            for (int t = 0; t < nt; t += step) {
                vi c = { 0 };
                if (nt - t >= step) c = ldw(tv->codes + 4 * (size_t)t * W);
                else memcpy(&c, tv->codes + 4 * (size_t)t * W, 4 * (size_t)(nt - t) * W);
                vi keep = tix < nt - t; /* lanes past the tile: 0 (what they read is not a value) */
                vf sw = KV_SHUF1(ldf(w + t), tix);
                vf a = (vf)((vi)(sw * KV_SHUF1(ldf(tv->vs + (size_t)t * nvg), gix)) & keep);
                vi h = high(c);
                for (int k = 0; k < P; k++) acc[k] += plane(c, h, bits, k) * a;
                acc[P] += (vf)((vi)(sw * KV_SHUF1(ldf(tv->vz + (size_t)t * nvg), gix)) & keep);
            }
        } else {
            size_t g0 = (size_t)m * KV_QVL / wpg;
            for (int t = 0; t < nt; t++) {
                vi c = ldw(tv->codes + 4 * ((size_t)t * W + (size_t)m * KV_QVL));
                vf sw = bcf(w[t]);
                const float *gs = tv->vs + (size_t)t * nvg + g0, *gz = tv->vz + (size_t)t * nvg + g0;
                vf a = sw * KV_SHUF1(ldf(gs), gix);
                vi h = high(c);
                for (int k = 0; k < P; k++) acc[k] += plane(c, h, bits, k) * a;
                acc[P] += sw * KV_SHUF1(ldf(gz), gix);
            }
        }
        for (int k = 0; k <= P; k++) memcpy(U + (size_t)(m * (P + 1) + k) * KV_QVL, &acc[k], sizeof acc[k]);
    }
}

/* vals_words' lane maps: lane l's token (l / W when W < KV_QVL, else 0)
 * and group index (token nvg + word / wpg, or l / wpg within a piece),
 * by counters: no division per lane */
static void lane_maps(const kv_qtile_vals *tv, vi *tix, vi *gix)
{
    int P = 32 / tv->bits, W = tv->dv / P, wpg = tv->gv / P;
    for (int l = 0, t = 0, x = 0, g = 0, y = 0; l < KV_QVL; l++) {
        (*tix)[l] = t;
        (*gix)[l] = t * tv->nvg + g;
        if (++y == wpg) {
            y = 0;
            g++;
        }
        if (++x == W) {
            x = y = g = 0;
            t++;
        }
    }
}

/* the pending floats of a coded state (qattn.h) added to its lanes */
static void flush_pending(double *r, size_t nl)
{
    double *u = r + KV_PS_U, *cnt = u + nl;
    float *p = (float *)(cnt + 1);
    if (*cnt == 0) return;
    for (size_t e = 0; e < nl; e++) {
        u[e] += p[e];
        p[e] = 0;
    }
    *cnt = 0;
}

float kv_qtile_max(const float *s, int nt)
{
    float mt = s[0];
    int t = 0;
    if (nt >= KV_QVL) {
        vf m = ldf(s);
        for (t = KV_QVL; t + KV_QVL <= nt; t += KV_QVL) {
            vf x = ldf(s + t);
            m = (vf)(((vi)(x > m) & (vi)x) | (~(vi)(x > m) & (vi)m));
        }
        for (int l = 0; l < KV_QVL; l++) mt = m[l] > mt ? m[l] : mt;
    }
    for (; t < nt; t++) mt = s[t] > mt ? s[t] : mt;
    return mt;
}

/* kv_attn_exp_tile with the sums by vector lanes (a fixed order, no
 * chain of nt dependent adds) */
void kv_qexp_tile(double *r, float *s, int nt, float mt, int nl)
{
    float m = kv_partial_raise_max(r, mt, nl);
    for (int t = 0; t < nt; t++) s[t] -= m;
    kv_expf_neg(s, (size_t)nt);
    vf l = bcf(0), l2 = bcf(0);
    int t = 0;
    for (; t + KV_QVL <= nt; t += KV_QVL) {
        vf x = ldf(s + t);
        l += x;
        l2 += x * x;
    }
    float a = 0, a2 = 0;
    for (; t < nt; t++) {
        a += s[t];
        a2 += s[t] * s[t];
    }
    for (int k = 0; k < KV_QVL; k++) {
        a += l[k];
        a2 += l2[k];
    }
    r[KV_PS_L] += a;
    r[KV_PS_L2] += a2;
}

void kv_qfold_tile(double *r, float *s, int nt, const kv_qtile_vals *tv, float *U)
{
    int dv = tv->dv;
    if (nt <= 0) return;
    float mt = kv_qtile_max(s, nt);
    double *u = r + KV_PS_U;
    if (!tv->coded) {
        kv_qexp_tile(r, s, nt, mt, dv);
        /* 64 channels at a time in registers, tokens inner */
        memset(U, 0, sizeof(float) * (size_t)dv);
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
    /* coded: the lanes (vals_words) add up in the pending floats, which
     * fold into the doubles before they would span more than KV_QTILE
     * tokens and before the max rises (they are relative to the max they
     * were made under) */
    size_t nl = kv_qlanes(dv, tv->bits);
    double *cnt = u + nl;
    float *p = (float *)(cnt + 1);
    if (mt > r[KV_PS_M] || *cnt + nt > KV_QTILE) flush_pending(r, nl);
    kv_qexp_tile(r, s, nt, mt, (int)nl);
    int seg = tv->seg > 0 ? tv->seg : nt;
    kv_qtile_vals sv = *tv;
    vi tix, gix;
    lane_maps(tv, &tix, &gix);
    for (int t0 = 0; t0 < nt; t0 += seg) { /* segment by segment, in token order */
        int n = nt - t0 < seg ? nt - t0 : seg;
        sv.codes = tv->codes + (size_t)(t0 / seg) * tv->segstride;
        sv.vz = tv->vz + (size_t)t0 * tv->nvg;
        sv.vs = tv->vs + (size_t)t0 * tv->nvg;
        switch (tv->bits) {
        case 2: vals_words(p, s + t0, &sv, n, tix, gix, 2); break;
        case 4: vals_words(p, s + t0, &sv, n, tix, gix, 4); break;
        default: vals_words(p, s + t0, &sv, n, tix, gix, 8); break;
        }
    }
    *cnt += nt;
}

void kv_qstate_clear(double *r, size_t len)
{
    r[KV_PS_M] = -INFINITY;
    for (size_t i = 1; i < len; i++) r[i] = 0;
}

void kv_qstate_merge(double *st, const double *r, const kv_qtile_vals *tv, double *tmp)
{
    int dv = tv->dv;
    if (!tv->coded) {
        kv_partial_merge(st, r, dv);
        return;
    }
    int P = 32 / tv->bits, W = dv / P, pieces = W < KV_QVL ? 1 : W / KV_QVL;
    size_t nl = kv_qlanes(dv, tv->bits);
    const double *u = r + KV_PS_U;
    const float *pend = (const float *)(u + nl + 1); /* the pending floats, added as a flush would */
    tmp[KV_PS_M] = r[KV_PS_M];
    tmp[KV_PS_L] = r[KV_PS_L];
    tmp[KV_PS_L2] = r[KV_PS_L2];
    for (int c = 0; c < dv; c++) tmp[KV_PS_U + c] = 0;
    /* lane l of piece m, plane k (P: the zero points): word (m KV_QVL + l) mod W */
    for (int m = 0, e = 0; m < pieces; m++)
        for (int k = 0; k <= P; k++) {
            double f = k < P ? kv_qword_scale(tv->bits, k) : 1;
            for (int l = 0; l < KV_QVL; l++, e++) {
                int i = (m * KV_QVL + l) % W;
                double x = u[e] + (double)pend[e];
                if (k < P) tmp[KV_PS_U + i * P + k] += x * f;
                else
                    for (int y = 0; y < P; y++) tmp[KV_PS_U + i * P + y] += x;
            }
        }
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
