/* tqcodec.c - see tqcodec.h */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/vshuf.h"
#include "kernels/dot.h"
#include "kernels/lanes16.h"
#include "methods/common/tqcodec.h"

#define TQ_SALT_ROT 0x74717270ULL /* "tqrp" */
#define TQ_GRID 16384

/* grid points (ascending) with their weights: t = sin(theta), theta on a
 * midpoint grid over [-tm, tm]; the density of t times dt/dtheta is
 * cos(theta)^(d - 2).  tm covers +-14 standard deviations (1/sqrt(d)). */
static void grid(int d, double *t, double *w)
{
    double tm = M_PI / 2, lim = 14.0 / sqrt((double)d);
    if (lim < 1) tm = asin(lim);
    for (int i = 0; i < TQ_GRID; i++) {
        double th = -tm + (i + 0.5) * (2 * tm / TQ_GRID), c = cos(th);
        t[i] = sin(th);
        w[i] = d == 2 ? 1.0 : exp((double)(d - 2) * log(c));
    }
}

/* points with t <= x (t ascending) */
static int upto(const double *t, double x)
{
    int lo = 0, hi = TQ_GRID;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (t[mid] <= x) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int book_compute(kv_tq_book *b, int d, int bits)
{
    memset(b, 0, sizeof *b);
    b->d = d;
    b->bits = bits;
    int L = 1 << bits;
    if (d == 1) { /* the coordinate is +-1: the end levels are exact */
        for (int k = 0; k < L; k++) b->c[k] = L > 1 ? (float)(-1.0 + 2.0 * k / (L - 1)) : 0.0f;
        for (int k = 0; k + 1 < L; k++) b->edge[k] = 0.5f * (b->c[k] + b->c[k + 1]);
        b->dist = L > 1 ? 0.0 : 1.0;
        return 0;
    }
    double *t = malloc(sizeof(double) * 4 * (TQ_GRID + 1));
    if (!t) return -1;
    double *w = t + TQ_GRID, *W = w + TQ_GRID, *X = W + TQ_GRID + 1, c[1 << KV_TQ_MAXBITS];
    grid(d, t, w);
    W[0] = X[0] = 0;
    for (int i = 0; i < TQ_GRID; i++) {
        W[i + 1] = W[i] + w[i];
        X[i + 1] = X[i] + w[i] * t[i];
    }
    for (int k = 0, i = 0; k < L; k++) { /* start from the quantiles (k + 1/2) / L */
        while (i < TQ_GRID - 1 && W[i + 1] < (k + 0.5) / L * W[TQ_GRID]) i++;
        c[k] = t[i];
    }
    for (int it = 0; it < 20000; it++) { /* Lloyd: cells at the midpoints, centroids = conditional means */
        double moved = 0;
        int lo = 0;
        for (int k = 0; k < L; k++) {
            int hi = k + 1 < L ? upto(t, 0.5 * (c[k] + c[k + 1])) : TQ_GRID;
            if (W[hi] > W[lo]) {
                double nc = (X[hi] - X[lo]) / (W[hi] - W[lo]);
                moved = fmax(moved, fabs(nc - c[k]));
                c[k] = nc;
            }
            lo = hi;
        }
        if (moved < 1e-14) break;
    }
    double err = 0;
    for (int i = 0, k = 0; i < TQ_GRID; i++) {
        while (k + 1 < L && t[i] > 0.5 * (c[k] + c[k + 1])) k++;
        err += w[i] * (t[i] - c[k]) * (t[i] - c[k]);
    }
    b->dist = err / W[TQ_GRID];
    for (int k = 0; k < L; k++) b->c[k] = (float)c[k];
    for (int k = 0; k + 1 < L; k++) b->edge[k] = (float)(0.5 * (c[k] + c[k + 1]));
    free(t);
    return 0;
}

/* The books made so far, for every instance of the process: a book is a
 * pure function of (d, bits), and computing one integrates over a grid of
 * 16,384 points (a millisecond or so), which every stream of a replay (and
 * every store=tq instance) would otherwise repeat at create.  The lock is
 * OpenMP's, so creates from any thread are safe. */
#define TQ_MEMO 64
static kv_tq_book memo[TQ_MEMO];
static int nmemo;

int kv_tq_book_make(kv_tq_book *b, int d, int bits)
{
    int found = 0, rc = 0;
#pragma omp critical(kv_tq_book_memo)
    {
        for (int i = 0; i < nmemo && !found; i++)
            if (memo[i].d == d && memo[i].bits == bits) { *b = memo[i]; found = 1; }
        if (!found) {
            rc = book_compute(b, d, bits);
            if (!rc && nmemo < TQ_MEMO) memo[nmemo++] = *b;
        }
    }
    return rc;
}

int kv_tq_rotation(float *R, int d, uint64_t seed, uint64_t stream)
{
    double *A = malloc(sizeof(double) * (size_t)d * (size_t)d);
    if (!A) return -1;
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++)
            A[(size_t)i * d + j] = kv_hash_normal(seed ^ TQ_SALT_ROT, stream, (uint64_t)i, (uint64_t)j);
    /* Gram-Schmidt with the rows in order (Q of A = QR with a positive
     * diagonal: Haar distributed), each projection done twice for
     * orthogonality to rounding */
    for (int i = 0; i < d; i++) {
        double *a = A + (size_t)i * d;
        for (int pass = 0; pass < 2; pass++)
            for (int j = 0; j < i; j++) {
                const double *q = A + (size_t)j * d;
                double dot = 0;
                for (int x = 0; x < d; x++) dot += a[x] * q[x];
                for (int x = 0; x < d; x++) a[x] -= dot * q[x];
            }
        double nn = 0;
        for (int x = 0; x < d; x++) nn += a[x] * a[x];
        nn = 1.0 / sqrt(nn); /* Gaussian rows are independent with probability 1 */
        for (int x = 0; x < d; x++) a[x] *= nn;
    }
    for (size_t i = 0; i < (size_t)d * (size_t)d; i++) R[i] = (float)A[i];
    free(A);
    return 0;
}

void kv_tq_gaussian(float *S, int d, uint64_t seed, uint64_t stream)
{
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++)
            S[(size_t)i * d + j] = (float)kv_hash_normal(seed ^ (TQ_SALT_ROT + 1), stream, (uint64_t)i, (uint64_t)j);
}

static inline unsigned code_at(const uint8_t *codes, int bits, int i)
{
    size_t bit = (size_t)i * (size_t)bits, by = bit >> 3;
    unsigned v = codes[by];
    if ((bit & 7) + (size_t)bits > 8) v |= (unsigned)codes[by + 1] << 8; /* a 3-bit code across two bytes */
    return (v >> (bit & 7)) & ((1u << bits) - 1);
}

float kv_tq_encode(const kv_tq_book *book, const float *R, const float *x, float *y, uint8_t *codes)
{
    for (int i = 0; i < book->d; i++) y[i] = kv_dot_fixed(R + (size_t)i * book->d, x, book->d);
    return kv_tq_encode_rotated(book, x, y, y, codes);
}

/* |x|^2 in double: 8 lanes (element i in lane i mod 8), then a fixed tree */
static double norm2(const float *x, int d)
{
    double a[8] = { 0 };
    int i = 0;
    for (; i + 8 <= d; i += 8)
        for (int l = 0; l < 8; l++) a[l] += (double)x[i + l] * x[i + l];
    for (int l = 0; i + l < d; l++) a[l] += (double)x[i + l] * x[i + l];
    return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
}

typedef float tq_v16f __attribute__((vector_size(16 * sizeof(float))));
typedef uint32_t tq_v16c __attribute__((vector_size(16 * sizeof(uint32_t))));

/* the codes of y[0..16) (the cell: edges below y) packed at their 2 b bytes:
 * 16-lane compares, each half's codes shifted into one 32-bit word */
static inline __attribute__((always_inline)) void codes16(const kv_tq_book *book, const float *y, int b,
                                                          uint8_t *out)
{
    static const tq_v16c lane = { 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7 };
    tq_v16f v;
    tq_v16c k = { 0 };
    memcpy(&v, y, sizeof v);
    for (int j = 0; j < (1 << b) - 1; j++) k -= (tq_v16c)(v > book->edge[j]); /* true: all ones, -1 */
    k <<= lane * (uint32_t)b;
    uint32_t a[16], lo = 0, hi = 0;
    memcpy(a, &k, sizeof a);
    for (int l = 0; l < 8; l++) lo |= a[l], hi |= a[l + 8];
    uint64_t w = lo | (uint64_t)hi << (8 * b);
    memcpy(out, &w, (size_t)(2 * b));
}

float kv_tq_encode_rotated(const kv_tq_book *book, const float *x, const float *Rx, float *y, uint8_t *codes)
{
    int d = book->d, b = book->bits, L1 = (1 << b) - 1, i = 0;
    double norm = sqrt(norm2(x, d)), inv = norm > 0 ? 1.0 / norm : 0.0;
    for (int c = 0; c < d; c++) y[c] = (float)(Rx[c] * inv);
    if (!b) return (float)norm;
    for (; i + 16 <= d; i += 16) { /* 16 codes fill 2 b whole bytes (zero before) */
        uint8_t *o = codes + (size_t)i * (size_t)b / 8;
        switch (b) { /* constant b: the compares and shifts vectorise */
        case 1: codes16(book, y + i, 1, o); break;
        case 2: codes16(book, y + i, 2, o); break;
        case 3: codes16(book, y + i, 3, o); break;
        default: codes16(book, y + i, 4, o); break;
        }
    }
    for (; i < d; i++) {
        unsigned k = 0;
        for (int e = 0; e < L1; e++) k += y[i] > book->edge[e];
        size_t bit = (size_t)i * (size_t)b;
        codes[bit >> 3] |= (uint8_t)(k << (bit & 7));
        if ((bit & 7) + (size_t)b > 8) codes[(bit >> 3) + 1] |= (uint8_t)(k >> (8 - (bit & 7)));
    }
    return (float)norm;
}

typedef float tq_v16 __attribute__((vector_size(16 * sizeof(float))));
typedef int32_t tq_v16i __attribute__((vector_size(16 * sizeof(int32_t))));
typedef uint64_t tq_v16u __attribute__((vector_size(16 * sizeof(uint64_t))));

static const tq_v16u tq_lane = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };

/* the 2 b bytes at p: 16 codes of b bits (byte-aligned), code l at bit l b (little-endian) */
static inline uint64_t word16(const uint8_t *p, int b)
{
    uint64_t w = 0;
    memcpy(&w, p, (size_t)(2 * b));
    return w;
}

/* 16 codes of b bits from the 2 b bytes at p, as lane indices (a macro: a
 * function returning a vector has another ABI without AVX-512) */
#define unpack16(p, b)                                                                                           \
    __builtin_convertvector(((word16((p), (b)) - (tq_v16u){ 0 }) >> (tq_lane * (uint64_t)(b))) &                \
                                (uint64_t)((1u << (b)) - 1),                                                     \
                            tq_v16i)

typedef uint32_t tq_v16w __attribute__((vector_size(16 * sizeof(uint32_t))));

/* *ix lane l = the bits from l b on of the 2 b bytes at p (b = 1, 2, 4: 32-bit
 * lanes; the permute reads the low 4 bits, the table repeats every 2^b) */
static inline __attribute__((always_inline)) void unpack16_32(const uint8_t *p, int b, tq_v16w *ix)
{
    static const tq_v16w lane = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };
    if (b < 4) {
        uint32_t w = 0;
        memcpy(&w, p, (size_t)(2 * b));
        *ix = ((tq_v16w){ 0 } + w) >> (lane * (uint32_t)b);
        return;
    }
    uint64_t w;
    memcpy(&w, p, 8);
    tq_v16w lo = (tq_v16w){ 0 } + (uint32_t)w, hi = (tq_v16w){ 0 } + (uint32_t)(w >> 32), k = (tq_v16w)(lane < 8); /* all ones below 8 */
    *ix = ((lo & k) | (hi & ~k)) >> ((lane & 7) * 4);
}

/* out[i] = scale c[code i], groups of 16 by a vector permute of the
 * (16-entry, padded) table, times scale (the same product as a scaled table) */
static inline __attribute__((always_inline)) void decode_table(const float *c, float scale, const uint8_t *codes,
                                                               int d, int b, float *out)
{
    tq_v16 t = { 0 };
    for (int k = 0; k < 16; k++) t[k] = c[k & ((1 << b) - 1)];
    int i = 0;
    for (; i + 16 <= d; i += 16) {
        tq_v16 v;
        if (b == 3) v = KV_SHUF1(t, unpack16(codes + (size_t)i * b / 8, b));
        else {
            tq_v16w ix;
            unpack16_32(codes + (size_t)i * b / 8, b, &ix);
            v = KV_SHUF1(t, ix);
        }
        v *= scale;
        memcpy(out + i, &v, sizeof v);
    }
    for (; i < d; i++) out[i] = scale * c[code_at(codes, b, i)];
}

void kv_tq_decode(const kv_tq_book *book, const uint8_t *codes, float scale, float *out)
{
    int d = book->d, b = book->bits;
    if (!b) {
        memset(out, 0, sizeof(float) * (size_t)d);
        return;
    }
    switch (b) { /* constant b: the shifts and masks specialise */
    case 1: decode_table(book->c, scale, codes, d, 1, out); break;
    case 2: decode_table(book->c, scale, codes, d, 2, out); break;
    case 3: decode_table(book->c, scale, codes, d, 3, out); break;
    default: decode_table(book->c, scale, codes, d, 4, out); break;
    }
}

/* out[r] = sum_i q[i] c[code i of row r] (16 lanes, then a fixed tree) */
static inline __attribute__((always_inline)) void dots_b(const float *c, const uint8_t *codes, size_t stride,
                                                         size_t n, const float *q, int d, int b, float *out)
{
    tq_v16 t = { 0 };
    memcpy(&t, c, sizeof(float) * (size_t)(1 << b));
    for (size_t r = 0; r < n; r++) {
        const uint8_t *cr = codes + r * stride;
        tq_v16 acc = { 0 }, x;
        int i = 0;
        for (; i + 16 <= d; i += 16) {
            memcpy(&x, q + i, sizeof x);
            acc += x * KV_SHUF1(t, unpack16(cr + (size_t)i * b / 8, b));
        }
        float a[16], tail = 0;
        memcpy(a, &acc, sizeof a);
        for (; i < d; i++) tail += q[i] * c[code_at(cr, b, i)];
        out[r] = kv_hsum16(a) + tail;
    }
}

/* u[i] += w[r] c[code i of row r], r < n */
static inline __attribute__((always_inline)) void axpys_b(const float *c, const uint8_t *codes, size_t stride,
                                                          size_t n, const float *w, int d, int b, float *u)
{
    tq_v16 t = { 0 };
    memcpy(&t, c, sizeof(float) * (size_t)(1 << b));
    int i = 0;
    for (; i + 16 <= d; i += 16) { /* one 16-lane accumulator per group, over all rows */
        tq_v16 acc;
        memcpy(&acc, u + i, sizeof acc);
        for (size_t r = 0; r < n; r++)
            acc += w[r] * KV_SHUF1(t, unpack16(codes + r * stride + (size_t)i * b / 8, b));
        memcpy(u + i, &acc, sizeof acc);
    }
    for (; i < d; i++)
        for (size_t r = 0; r < n; r++) u[i] += w[r] * c[code_at(codes + r * stride, b, i)];
}

void kv_tq_dots(const kv_tq_book *book, const uint8_t *codes, size_t stride, size_t n, const float *q, float *out)
{
    int d = book->d;
    switch (book->bits) {
    case 0: memset(out, 0, sizeof(float) * n); break;
    case 1: dots_b(book->c, codes, stride, n, q, d, 1, out); break;
    case 2: dots_b(book->c, codes, stride, n, q, d, 2, out); break;
    case 3: dots_b(book->c, codes, stride, n, q, d, 3, out); break;
    default: dots_b(book->c, codes, stride, n, q, d, 4, out); break;
    }
}

void kv_tq_axpys(const kv_tq_book *book, const uint8_t *codes, size_t stride, size_t n, const float *w, float *u)
{
    int d = book->d;
    switch (book->bits) {
    case 0: break;
    case 1: axpys_b(book->c, codes, stride, n, w, d, 1, u); break;
    case 2: axpys_b(book->c, codes, stride, n, w, d, 2, u); break;
    case 3: axpys_b(book->c, codes, stride, n, w, d, 3, u); break;
    default: axpys_b(book->c, codes, stride, n, w, d, 4, u); break;
    }
}

float kv_tq_residual(const kv_tq_book *book, const float *S, const float *y, const uint8_t *codes, float *r,
                     uint8_t *signs)
{
    int d = book->d;
    kv_tq_decode(book, codes, 1.0f, r);
    double g = 0;
    for (int i = 0; i < d; i++) {
        r[i] = y[i] - r[i];
        g += (double)r[i] * r[i];
    }
    for (int i = 0; i < d; i++)
        if (kv_dot_fixed(S + (size_t)i * d, r, d) >= 0) signs[i >> 3] |= (uint8_t)(1u << (i & 7));
    return (float)sqrt(g);
}

void kv_tq_signs(const uint8_t *signs, int d, float scale, float *out)
{
    for (int i = 0; i < d; i++) out[i] = (signs[i >> 3] >> (i & 7)) & 1 ? scale : -scale;
}
