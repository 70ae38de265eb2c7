/* tqcodec.h - TurboQuant's vector codec (Zandieh, Daliri, Hadian, Mirrokni,
 * ICLR 2026; ALGORITHMS.md section 7b), used by methods/turboquant.c.
 *
 * A vector x of dimension d is stored as its norm |x| and, for the unit
 * vector y = Pi x / |x| (Pi a random rotation), one b-bit code per
 * coordinate: the cell of a Lloyd-Max codebook for the law of one
 * coordinate of a uniformly random unit vector in R^d, whose density is
 * proportional to (1 - t^2)^((d - 3) / 2) on [-1, 1] (for large d about
 * N(0, 1/d)).  The codebook is computed by Lloyd iterations on that exact
 * density (numerically integrated), not from Gaussian tables: small head
 * dimensions (8 in stories260K) are far from Gaussian.
 *
 * The "prod" stage (the paper's Q_prod): the residual r = y - yhat of the
 * MSE stage is kept as gamma = |r| and the d sign bits of S r (S a d x d
 * Gaussian matrix); for any a, <a, yhat> + sqrt(pi/2) / d gamma <S a, sign(S r)>
 * is an unbiased estimate of <a, y> over S.
 *
 * Codes are packed little-endian, code i at bit i b of the row (b in 1..4;
 * 3-bit codes straddle bytes). */
#ifndef KVSTREAM_TQCODEC_H
#define KVSTREAM_TQCODEC_H

#include <stddef.h>
#include <stdint.h>

#define KV_TQ_MAXBITS 4

typedef struct {
    int d, bits;
    float c[1 << KV_TQ_MAXBITS];          /* 2^bits centroids, ascending */
    float edge[(1 << KV_TQ_MAXBITS) - 1]; /* cell boundaries: midpoints of consecutive centroids */
    double dist;                          /* E[(t - c(t))^2] for one coordinate (the density's) */
} kv_tq_book;

/* The Lloyd-Max codebook of bits (1..4) for dimension d (d = 1: +-1).  Deterministic.
 * 0, or -1 without memory (for the integration grid).  Made once per
 * (d, bits) in a process and copied from then on (a pure function). */
int kv_tq_book_make(kv_tq_book *b, int d, int bits);

/* A Haar-random d x d rotation (row-major, orthonormal rows), made by
 * Gram-Schmidt (twice, in double) on Gaussian rows keyed by (seed, stream);
 * 0, or -1 without memory. */
int kv_tq_rotation(float *R, int d, uint64_t seed, uint64_t stream);

/* A d x d matrix of N(0, 1) entries keyed by (seed, stream). */
void kv_tq_gaussian(float *S, int d, uint64_t seed, uint64_t stream);

/* Bytes of n codes of b bits. */
static inline size_t kv_tq_code_bytes(int bits, size_t n) { return (n * (size_t)bits + 7) / 8; }

/* Encode x (d floats): returns |x|; y (d floats of scratch) gets the
 * rotated unit vector Pi x / |x| (0 when x = 0) and codes (zeroed by the
 * caller, kv_tq_code_bytes) its codes under book (bits 0: nothing). */
float kv_tq_encode(const kv_tq_book *book, const float *R, const float *x, float *y, uint8_t *codes);

/* kv_tq_encode with Pi x given (Rx, d floats, e.g. from kv_dot_fixed_rows; y may be Rx). */
float kv_tq_encode_rotated(const kv_tq_book *book, const float *x, const float *Rx, float *y, uint8_t *codes);

/* out[i] = scale * c[code i], i < d: the rotated unit vector's estimate,
 * times scale (the norm), in the rotated domain. */
void kv_tq_decode(const kv_tq_book *book, const uint8_t *codes, float scale, float *out);

/* The compressed-domain kernels of one query against n code rows (row r
 * at codes + r stride, d = book->d codes each): out[r] = sum_i q[i] c[code i]
 * (float, 16 lanes); and u[i] += sum_r w[r] c[code i of row r] (float). */
void kv_tq_dots(const kv_tq_book *book, const uint8_t *codes, size_t stride, size_t n, const float *q, float *out);
void kv_tq_axpys(const kv_tq_book *book, const uint8_t *codes, size_t stride, size_t n, const float *w, float *u);

/* The prod stage on y and its codes (bits may be 0: yhat = 0): r (d floats
 * of scratch) = y - yhat, signs (zeroed, d bits) = sign bits of S r
 * (bit set: >= 0); returns gamma = |r|. */
float kv_tq_residual(const kv_tq_book *book, const float *S, const float *y, const uint8_t *codes, float *r,
                     uint8_t *signs);

/* out[i] = scale * (+1 or -1 by sign bit i), i < d. */
void kv_tq_signs(const uint8_t *signs, int d, float scale, float *out);

#endif
