/* tqscan.c - see tqscan.h */
#include <string.h>
#include <math.h>
#include "kernels/attn.h"
#include "kernels/lanes16.h"
#include "kernels/partial.h"
#include "kernels/vshuf.h"
#include "methods/common/tqscan.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef float tq_f16 __attribute__((vector_size(16 * sizeof(float))));
typedef uint32_t tq_u16 __attribute__((vector_size(16 * sizeof(uint32_t))));

/* channels per 4-bit lookup */
static inline int per_look(int b) { return b == 1 ? 4 : b == 2 ? 2 : 1; }

int kv_tq_tables(const kv_tq_book *book, const float *q, float *T)
{
    int b = book->bits, d = book->d, g = per_look(b), nl = (d + g - 1) / g, m = (1 << b) - 1;
    for (int j = 0; j < nl; j++)
        for (int x = 0; x < 16; x++) { /* b = 3: the fourth index bit (the next code's) is ignored */
            float t = 0;
            for (int i = 0; i < g && j * g + i < d; i++) t += q[j * g + i] * book->c[(x >> (i * b)) & m];
            T[16 * j + x] = t;
        }
    return nl;
}

#if defined(__AVX512VBMI__)
/* byte 4 l + j of a word vector = byte 16 j + l of a block's 64 bytes */
#define TQ_TR4(l) (l), 16 + (l), 32 + (l), 48 + (l)
static const uint8_t tq_tr[64] = { TQ_TR4(0),  TQ_TR4(1),  TQ_TR4(2),  TQ_TR4(3),  TQ_TR4(4),  TQ_TR4(5),
                                   TQ_TR4(6),  TQ_TR4(7),  TQ_TR4(8),  TQ_TR4(9),  TQ_TR4(10), TQ_TR4(11),
                                   TQ_TR4(12), TQ_TR4(13), TQ_TR4(14), TQ_TR4(15) };
#endif

/* *out lane l = the 32 bits at byte 4 w of the field (nb bytes) of lane l
 * of the block whose field starts at p (byte j of lane l at p + 16 j + l,
 * tqscan.h); bytes past the field's end read as zeros (and are not read) */
static inline __attribute__((always_inline)) void load_word(const uint8_t *p, size_t nb, int w, tq_u16 *out)
{
    ptrdiff_t k = (ptrdiff_t)nb - 4 * (ptrdiff_t)w; /* the word's bytes inside the field */
    const uint8_t *a = p + 64 * (size_t)w;
#if defined(__AVX512VBMI__)
    if (k >= 4) { /* one load, one byte permute */
        __m512i x = _mm512_permutexvar_epi8(_mm512_loadu_si512(tq_tr), _mm512_loadu_si512(a));
        memcpy(out, &x, sizeof *out);
        return;
    }
#endif
#if defined(__AVX512F__)
    __m512i r = _mm512_setzero_si512();
    for (int j = 0; j < 4 && j < k; j++)
        r = _mm512_or_si512(r, _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const void *)(a + 16 * j))),
                                                 (unsigned)(8 * j)));
    memcpy(out, &r, sizeof *out);
#else
    tq_u16 v = { 0 };
    for (int j = 0; j < 4 && j < k; j++)
        for (int l = 0; l < 16; l++) v[l] |= (uint32_t)a[16 * j + l] << (8 * j);
    *out = v;
#endif
}

/* the cached words of a 16-row group: cur = word wc, nxt = word wn */
typedef struct { tq_u16 cur, nxt; int wc, wn; } words;

/* *ix lane l = the bits from P on of row l's field (the low 4 are the
 * lookup's index; above them the next codes, which the periodic tables ignore) */
static inline __attribute__((always_inline)) void index_at(const uint8_t *p, size_t nb, int P, int wd, words *W,
                                                           tq_u16 *ix)
{
    int w = P >> 5, s = P & 31;
    if (w != W->wc) {
        if (w == W->wn) W->cur = W->nxt;
        else load_word(p, nb, w, &W->cur);
        W->wc = w;
    }
    *ix = W->cur >> (uint32_t)s;
    if (s + wd > 32) { /* 3-bit codes: the index straddles two words */
        if (W->wn != w + 1) {
            load_word(p, nb, w + 1, &W->nxt);
            W->wn = w + 1;
        }
        *ix |= W->nxt << (uint32_t)(32 - s);
    }
}

/* ix = the bits from q on of the pair of words (w0, w1) (q constant after unrolling) */
#define TQ_BITS(w0, w1, q, wd)                                                                                  \
    ((q) >= 32 ? (w1) >> (uint32_t)((q) - 32)                                                                   \
               : (q) + (wd) > 32 ? ((w0) >> (uint32_t)(q)) | ((w1) << (uint32_t)(32 - (q))) : (w0) >> (uint32_t)(q))

/* each row's sum over the lookups in order, even and odd lookups in two
 * accumulators (two add chains), added at the end; whole chunks of lookups
 * (8 per word, b = 3: 32 per 3 words) with constant positions, the rest one
 * by one.  G groups of 16 rows (from row r0; the last m rows of them, m <= 16
 * when G = 1) side by side: their chains interleave (an add's latency
 * hidden), each table row loaded once for them; each row's arithmetic is
 * the same for any G.  The kernels after this one read the same blocks:
 * the stride bytes from the field of the block TQ_AHEAD on are prefetched
 * (the whole block as the row advances; a hint, never a fault). */
#define TQ_AHEAD 8 /* blocks */

static inline __attribute__((always_inline)) void dots_g(const float *T, int nl, int b, const uint8_t *codes,
                                                         size_t nb, size_t stride, int r0, int G, int m, float *out)
{
    const int wd = per_look(b) * b, cl = b == 3 ? 32 : 8, cw = cl * wd / 32; /* lookups and words per chunk */
    const uint8_t *p = codes + (size_t)(r0 / 16) * stride;
    tq_f16 a0[4], a1[4], t;
    int j = 0;
    for (int g = 0; g < G; g++) a0[g] = a1[g] = (tq_f16){ 0 };
    for (int g = 0; g < G; g++) { /* the first pass over these rows: fetch the blocks TQ_AHEAD on (a hint) */
        const char *f = (const char *)(p + (size_t)(TQ_AHEAD + g) * stride);
        for (size_t o = 0; o < stride; o += 64) __builtin_prefetch(f + o);
    }
    for (; j + cl <= nl; j += cl) {
        tq_u16 w[4][3];
        for (int g = 0; g < G; g++)
            for (int k = 0; k < cw; k++) load_word(p + (size_t)g * stride, nb, j * wd / 32 + k, &w[g][k]);
        for (int i = 0; i < cl; i++) {
            int q = i * wd, k = q >> 5;
            memcpy(&t, T + 16 * (size_t)(j + i), sizeof t);
            for (int g = 0; g < G; g++) {
                tq_u16 ix = TQ_BITS(w[g][k], w[g][k + 1 < cw ? k + 1 : k], q & 31, wd);
                if (i & 1) a1[g] += KV_SHUF1(t, ix);
                else a0[g] += KV_SHUF1(t, ix);
            }
        }
    }
    for (int g = 0; g < G; g++) {
        words W = { .wc = -1, .wn = -1 };
        for (int jj = j; jj < nl; jj++) {
            tq_u16 ix;
            index_at(p + (size_t)g * stride, nb, jj * wd, wd, &W, &ix);
            memcpy(&t, T + 16 * (size_t)jj, sizeof t);
            if (jj & 1) a1[g] += KV_SHUF1(t, ix);
            else a0[g] += KV_SHUF1(t, ix);
        }
        a0[g] += a1[g];
        if (m == 16) memcpy(out + r0 + 16 * g, &a0[g], sizeof a0[g]);
        else memcpy(out + r0 + 16 * g, &a0[g], sizeof(float) * (size_t)m);
    }
}

static inline __attribute__((always_inline)) void dots_b(const float *T, int nl, int b, const uint8_t *codes,
                                                         size_t nb, size_t stride, int n, float *out)
{
    int r0 = 0;
    for (; r0 + 64 <= n; r0 += 64) dots_g(T, nl, b, codes, nb, stride, r0, 4, 16, out);
    for (; r0 + 16 <= n; r0 += 16) dots_g(T, nl, b, codes, nb, stride, r0, 1, 16, out);
    if (r0 < n) dots_g(T, nl, b, codes, nb, stride, r0, 1, n - r0, out);
}

void kv_tq_scan_dots(const kv_tq_book *book, const float *T, const uint8_t *codes, size_t nb, size_t stride, int n,
                     float *out)
{
    int g = per_look(book->bits), nl = (book->d + g - 1) / g;
    switch (book->bits) { /* constant b: the index positions specialise */
    case 0: memset(out, 0, sizeof(float) * (size_t)n); break;
    case 1: dots_b(T, nl, 1, codes, nb, stride, n, out); break;
    case 2: dots_b(T, nl, 2, codes, nb, stride, n, out); break;
    case 3: dots_b(T, nl, 3, codes, nb, stride, n, out); break;
    default: dots_b(T, nl, 4, codes, nb, stride, n, out); break;
    }
}

/* channels c0 .. c0 + nc - 1 (nc <= 16): one 16-lane accumulator each over
 * the rows (lane = row within its group), the lanes summed once */
static inline __attribute__((always_inline)) void axpys_chunk(const float *tc, int b, int c0, int nc, const uint8_t *codes,
                                                              size_t nb, size_t stride, int n, const float *w,
                                                              float *u)
{
    tq_f16 acc[16], wv, t;
    memcpy(&t, tc, sizeof t);
    for (int i = 0; i < nc; i++) acc[i] = (tq_f16){ 0 };
    for (int r0 = 0; r0 < n; r0 += 16) {
        const uint8_t *p = codes + (size_t)(r0 / 16) * stride;
        words W = { .wc = -1, .wn = -1 };
        memcpy(&wv, w + r0, sizeof wv);
        for (int i = 0; i < nc; i++) {
            tq_u16 ix;
            index_at(p, nb, (c0 + i) * b, b, &W, &ix);
            acc[i] += wv * KV_SHUF1(t, ix);
        }
    }
    for (int i = 0; i < nc; i++) {
        float a[16];
        memcpy(a, &acc[i], sizeof a);
        u[c0 + i] += kv_hsum16(a);
    }
}

/* u[i] += kv_hsum16(acc[i]), i < 16: under AVX-512 the 16 trees side by
 * side (the same pairs added in the same order: lanes l + 8, then + 4,
 * + 2, + 1), the sums landing in lane 4 (i & 3) + (i >> 2), put in order
 * by one permute */
static inline __attribute__((always_inline)) void hsum16x16(const tq_f16 *acc, float *u)
{
#if defined(__AVX512F__)
    __m512 x[8], z[4], v[2], r, uo;
    for (int p = 0; p < 8; p++) { /* lanes 0-7: acc[2p]'s l + (l + 8); 8-15: acc[2p + 1]'s */
        __m512 a, b;
        memcpy(&a, &acc[2 * p], sizeof a);
        memcpy(&b, &acc[2 * p + 1], sizeof b);
        x[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    }
    for (int p = 0; p < 4; p++) /* quarter k: acc[4p + k]'s l + (l + 4), l < 4 */
        z[p] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * p], x[2 * p + 1], 0x88),
                             _mm512_shuffle_f32x4(x[2 * p], x[2 * p + 1], 0xDD));
    for (int p = 0; p < 2; p++) /* quarter k: [acc[8p + k], acc[8p + 4 + k]]'s l + (l + 2), l < 2 */
        v[p] = _mm512_add_ps(_mm512_shuffle_ps(z[2 * p], z[2 * p + 1], 0x44),
                             _mm512_shuffle_ps(z[2 * p], z[2 * p + 1], 0xEE));
    r = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD)); /* lane 4k + j: acc[k + 4j] */
    r = _mm512_permutexvar_ps(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), r);
    uo = _mm512_add_ps(_mm512_loadu_ps(u), r);
    _mm512_storeu_ps(u, uo);
#else
    for (int i = 0; i < 16; i++) {
        float a[16];
        memcpy(a, &acc[i], sizeof a);
        u[i] += kv_hsum16(a);
    }
#endif
}

/* a whole chunk of 16 channels from bit s0 (0 or 16, constant) of word w0:
 * every position constant, the accumulators in registers; b = 1, 2: the
 * g channels of a 4-bit field share its shift (table i: c[code i of x]) */
static inline __attribute__((always_inline)) void axpys_16(const float *c, int b, int s0, int w0,
                                                           const uint8_t *codes, size_t nb, size_t stride, int n,
                                                           const float *w, float *u)
{
    const int g = b == 3 ? 1 : per_look(b), nw = (s0 + 16 * b + 31) / 32, mk = (1 << b) - 1;
    tq_f16 acc[16], wv, t[4];
    for (int i = 0; i < g; i++) {
        float f[16];
        for (int k = 0; k < 16; k++) f[k] = c[(k >> (i * b)) & mk]; /* periodic: index bits above ignored */
        memcpy(&t[i], f, sizeof f);
    }
    for (int i = 0; i < 16; i++) acc[i] = (tq_f16){ 0 };
    for (int r0 = 0; r0 < n; r0 += 16) {
        const uint8_t *p = codes + (size_t)(r0 / 16) * stride;
        tq_u16 x[2];
        for (int k = 0; k < nw; k++) load_word(p, nb, w0 + k, &x[k]);
        if (nw == 1) x[1] = x[0];
        memcpy(&wv, w + r0, sizeof wv);
        for (int i = 0; i < 16; i++) {
            int q = s0 + (i - i % g) * b; /* the field's first bit */
            acc[i] += wv * KV_SHUF1(t[i % g], TQ_BITS(x[0], x[1], q, g * b));
        }
    }
    hsum16x16(acc, u);
}

static inline __attribute__((always_inline)) void axpys_b(const float *c, int d, int b, const uint8_t *codes,
                                                          size_t nb, size_t stride, int n, const float *w, float *u)
{
    int c0 = 0;
    for (; c0 + 16 <= d; c0 += 16) { /* chunk c0 / 16 starts at bit 16 b (c0 / 16): s0 = 0 or 16 */
        int P = c0 * b;
        if (P & 31) axpys_16(c, b, 16, P >> 5, codes, nb, stride, n, w, u + c0);
        else axpys_16(c, b, 0, P >> 5, codes, nb, stride, n, w, u + c0);
    }
    if (c0 < d) {
        float t[16];
        for (int k = 0; k < 16; k++) t[k] = c[k & ((1 << b) - 1)]; /* periodic: the index bits above b ignored */
        axpys_chunk(t, b, c0, d - c0, codes, nb, stride, n, w, u);
    }
}

/* lane l: a where the mask lane is all ones, else b */
#define TQ_SEL(k, a, b) ((tq_f16)(((tq_u16)(a) & (k)) | ((tq_u16)(b) & ~(k))))

/* the mask of lanes l < m */
static inline __attribute__((always_inline)) tq_u16 lanes_below(int m)
{
    const tq_u16 lane = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };
    return (tq_u16)(lane < (uint32_t)m);
}

/* a b + c, fused under AVX-512 (else as the compiler contracts it) */
static inline __attribute__((always_inline)) tq_f16 tq_fma(tq_f16 a, tq_f16 b, tq_f16 c)
{
#if defined(__AVX512F__)
    __m512 x, y, z;
    memcpy(&x, &a, sizeof x), memcpy(&y, &b, sizeof y), memcpy(&z, &c, sizeof z);
    x = _mm512_fmadd_ps(x, y, z);
    memcpy(&a, &x, sizeof a);
    return a;
#else
    return a * b + c;
#endif
}

/* lanes l < m of the 16 floats at p (0 beyond) */
static inline __attribute__((always_inline)) void load_f(const uint8_t *p, int m, tq_f16 *out)
{
    memcpy(out, p, sizeof *out);
    if (m < 16) *out = TQ_SEL(lanes_below(m), *out, (tq_f16){ 0 });
}

void kv_tq_scan_weights(const uint8_t *rows, size_t stride, int n, int prod, float coef, float scale, float *lg,
                        const float *sg, double *st, int dv)
{
    tq_f16 mx = { 0 }, kn, g, x, y, l = { 0 }, l2 = { 0 };
    mx -= INFINITY;
    for (int r0 = 0; r0 < n; r0 += 16) { /* the logits and their max (the pad lanes -inf) */
        int m = n - r0 < 16 ? n - r0 : 16;
        const uint8_t *p = rows + (size_t)(r0 / 16) * stride;
        load_f(p, m, &kn);
        memcpy(&x, lg + r0, sizeof x);
        if (prod) { /* kn x + (coef kn g y rounded): one fused multiply-add, pinned (not left to contraction) */
            load_f(p + 128, m, &g);
            memcpy(&y, sg + r0, sizeof y);
            x = tq_fma(kn, x, coef * kn * g * y);
        } else
            x = kn * x;
        x = scale * x;
        if (m < 16) x = TQ_SEL(lanes_below(m), x, mx); /* the pad lanes leave the max as it is */
        mx = TQ_SEL((tq_u16)(x > mx), x, mx);
        memcpy(lg + r0, &x, sizeof x);
    }
    float mt = mx[0];
    for (int k = 1; k < 16; k++) mt = mx[k] > mt ? mx[k] : mt;
    float M = kv_partial_raise_max(st, mt, dv);
    for (int r = 0; r < n; r++) lg[r] -= M;
    kv_expf_neg(lg, (size_t)n);
    for (int r0 = 0; r0 < n; r0 += 16) { /* their sums, then p |v| (the pad 0) */
        int m = n - r0 < 16 ? n - r0 : 16;
        memcpy(&x, lg + r0, sizeof x);
        if (m < 16) x = TQ_SEL(lanes_below(m), x, (tq_f16){ 0 });
        l += x;
        l2 += x * x;
        load_f(rows + (size_t)(r0 / 16) * stride + 64, m, &kn);
        x *= kn;
        memcpy(lg + r0, &x, sizeof x);
    }
    float a[16];
    memcpy(a, &l, sizeof a);
    st[KV_PS_L] += kv_hsum16(a);
    memcpy(a, &l2, sizeof a);
    st[KV_PS_L2] += kv_hsum16(a);
}

void kv_tq_scan_axpys(const kv_tq_book *book, const uint8_t *codes, size_t nb, size_t stride, int n, const float *w,
                      float *u)
{
    int d = book->d;
    switch (book->bits) {
    case 0: break;
    case 1: axpys_b(book->c, d, 1, codes, nb, stride, n, w, u); break;
    case 2: axpys_b(book->c, d, 2, codes, nb, stride, n, w, u); break;
    case 3: axpys_b(book->c, d, 3, codes, nb, stride, n, w, u); break;
    default: axpys_b(book->c, d, 4, codes, nb, stride, n, w, u); break;
    }
}

void kv_tq_block_rows(const uint8_t *blk, size_t row, size_t nrm, int m, uint8_t *out)
{
    size_t nb = row - nrm; /* the code bytes: one interleaved field from 16 nrm */
    for (int w = 0; 4 * (size_t)w < nb; w++) { /* a word of every row at once; the last may spill 3 bytes */
        tq_u16 v;
        load_word(blk + 16 * nrm, nb, w, &v);
        for (int l = 0; l < m; l++) {
            uint32_t x = v[l]; /* no address of a vector element (clang refuses it) */
            memcpy(out + (size_t)l * row + nrm + 4 * (size_t)w, &x, 4);
        }
    }
    for (size_t f = 0; 4 * f < nrm; f++) /* the norms after: over any spill of the row before */
        for (int l = 0; l < m; l++) memcpy(out + (size_t)l * row + 4 * f, blk + 64 * f + 4 * (size_t)l, 4);
}

/* 16 outputs j.. of m <= 8 vectors: acc[t] += x[t][c] RT[c][j..j+16), c in order */
static inline __attribute__((always_inline)) void rot16(const float *RT, int d, const float *x, int m, int j,
                                                        float *o)
{
    tq_f16 acc[8], r;
    for (int t = 0; t < m; t++) acc[t] = (tq_f16){ 0 };
    for (int c = 0; c < d; c++) {
        memcpy(&r, RT + (size_t)c * (size_t)d + j, sizeof r);
        for (int t = 0; t < m; t++) acc[t] += x[(size_t)t * (size_t)d + c] * r;
    }
    for (int t = 0; t < m; t++) memcpy(o + (size_t)t * (size_t)d + j, &acc[t], sizeof acc[t]);
}

void kv_tq_rotate(const float *RT, int d, const float *x, int nt, float *out)
{
    for (int t0 = 0; t0 < nt; t0 += 8) {
        int m = nt - t0 < 8 ? nt - t0 : 8, j = 0;
        const float *xb = x + (size_t)t0 * (size_t)d;
        float *ob = out + (size_t)t0 * (size_t)d;
        for (; j + 16 <= d; j += 16) {
            if (m == 8) rot16(RT, d, xb, 8, j, ob); /* constant: the accumulators in registers */
            else rot16(RT, d, xb, m, j, ob);
        }
        for (; j < d; j++)
            for (int t = 0; t < m; t++) {
                float a = 0;
                for (int c = 0; c < d; c++) a += xb[(size_t)t * (size_t)d + c] * RT[(size_t)c * (size_t)d + j];
                ob[(size_t)t * (size_t)d + j] = a;
            }
    }
}

void kv_tq_row_copy(uint8_t *blk, size_t nrm, int l, size_t j0, size_t n, uint8_t *x, int put)
{
    size_t j = j0;
    for (; j < j0 + n && j < nrm; j++) { /* the norms */
        uint8_t *at = blk + kv_tq_byte_at(j, nrm, l);
        if (put) *at = x[j - j0];
        else x[j - j0] = *at;
    }
    uint8_t *at = blk + 16 * j + (size_t)l; /* the codes: a byte every 16 */
    if (put)
        for (; j < j0 + n; j++, at += 16) *at = x[j - j0];
    else
        for (; j < j0 + n; j++, at += 16) x[j - j0] = *at;
}

void kv_tq_rotate_back(const float *RT, int dv, const double *u, double *y)
{
    int i = 0;
    for (; i + 8 <= dv; i += 8) { /* 8 outputs side by side: independent chains */
        double t[8] = { 0 };
        const float *r = RT + (size_t)i * dv;
        for (int j = 0; j < dv; j++)
            for (int k = 0; k < 8; k++) t[k] += (double)r[(size_t)k * dv + j] * u[j];
        memcpy(y + i, t, sizeof t);
    }
    for (; i < dv; i++) {
        double t = 0;
        for (int j = 0; j < dv; j++) t += (double)RT[(size_t)i * dv + j] * u[j];
        y[i] = t;
    }
}
