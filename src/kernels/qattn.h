/* qattn.h - attention over quantised tiles, in the compressed domain
 * (the kernels behind kivi and qjl).
 *
 * Codes are never decoded to floats with their scales: a b-bit code array
 * is read straight from its bytes, 32-bit words split into their b-bit
 * planes (the word layout below), and whatever multiplies a code - a key's
 * per-channel scale, a value's per-token scale times its softmax weight -
 * is folded into the other operand:
 *     q . k_t = sum_c q_c z_c + sum_c (q_c s_c) code_tc        (kivi keys)
 *     sum_t w_t v_tc = sum_t (w_t s_tj) code_tc + sum_t w_t z_tj  (values, group j)
 * A tile of KV_QTILE tokens gets its logits from the caller, then
 * kv_qfold_tile does the max-shifted softmax in float and folds the tile's
 * sums into the double state (as kernels/attn.c does), so accuracy does
 * not depend on n.  GCC vector extensions of KV_QVL lanes (16 under
 * AVX-512, else 8: AVX2 or the portable build, the build chooses,
 * -march=native or not): key logits and QJL's sign sums take a token per
 * lane (no horizontal sums), values a word per lane; every loop has a
 * fixed order, so a token's logit and a tile's sums are bitwise the same
 * whichever thread computes them.
 *
 * Scratch (kv_qscratch) lives in the caller's state: one buffer per thread,
 * grown geometrically, so answering a query allocates nothing once warm. */
#ifndef KVSTREAM_QATTN_H
#define KVSTREAM_QATTN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define KV_QTILE 128 /* tokens per tile at most */

/* half -> float for finite halves (scales and zero points are checked
 * finite): the bits shifted into a float, times 2^112, exact for normal and
 * subnormal halves alike, and branch-free so it vectorises. */
static inline float kv_qhalf(uint32_t h)
{
    uint32_t x = (h & 0x7fffu) << 13, y;
    float f;
    memcpy(&f, &x, 4);
    f *= 0x1p112f;
    memcpy(&y, &f, 4);
    y |= (h & 0x8000u) << 16; /* the sign by bits, not a branch */
    memcpy(&f, &y, 4);
    return f;
}

/* n (zero point, scale) half pairs (4 bytes each, any alignment) to z[], s[];
 * under AVX-512 16 pairs at a time by the hardware conversion, which is
 * exact too (the same floats). */
static inline void kv_qhalves(const uint8_t *zs, int n, float *z, float *s)
{
    int i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16) {
        __m512i w = _mm512_loadu_si512(zs + 4 * (size_t)i);
        _mm512_storeu_ps(z + i, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w)));
        _mm512_storeu_ps(s + i, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(w, 16))));
    }
#endif
    for (; i < n; i++) {
        uint32_t w;
        memcpy(&w, zs + 4 * (size_t)i, 4); /* little-endian: z low, s high */
        z[i] = kv_qhalf(w & 0xffffu);
        s[i] = kv_qhalf(w >> 16);
    }
}

/* The word layout.  b-bit codes (b in {2, 4, 8}) are read 32 bits at a
 * time: a word holds P = 32 / b codes, code k at bits [k b, k b + b)
 * (kv_quantise's little-endian packing of consecutive elements).  Plane k
 * of a word is read without a shift, masked in place: planes k < P/2 from
 * the word, the others from its high half (the word >> 16), so plane k
 * reads code 2^(j b), j = k mod P/2, and kv_qword_scale(b, k) = 2^(-j b)
 * is folded into what multiplies it.  Vectors take KV_QVL words (16 with
 * AVX-512, else 8). */
#ifdef __AVX512F__
#define KV_QVL 16
#else
#define KV_QVL 8
#endif

static inline float kv_qword_scale(int bits, int k)
{
    uint32_t x = (uint32_t)(127 - k % (16 / bits) * bits) << 23;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* Keys, vectorised over tokens: a group of G tokens and d channels is
 * held as ceil(d / P) blocks of G words, block j holding channels
 * [j P, j P + P) of token t in its word t (so code (t, c) is element
 * (c / P) G P + t P + c % P; channels past d are code 0).
 * S[t] = qz + sum_c qs[c] code_tc for the nt tokens from codes (the
 * group's first block, offset by the first token), nb blocks G words
 * apart; qs holds nb P floats, times kv_qword_scale of each plane. */
void kv_qlogits_words(const float *qs, float qz, const uint8_t *codes, int G, int nb, int bits, int nt, float *S);

/* Values, vectorised over words: 1 if token-major codes of dv channels in
 * groups of gv (token t's W = dv / P words contiguous) take the word path
 * of kv_qfold_tile: whole words, each in one group, and W dividing or a
 * multiple of KV_QVL. */
static inline int kv_qwords_ok(int bits, int dv, int gv)
{
    if (bits != 2 && bits != 4 && bits != 8) return 0;
    int P = 32 / bits, W = dv / P, wpg = gv / P;
    return dv % P == 0 && gv % P == 0 &&
           (KV_QVL % W == 0 || (W % KV_QVL == 0 && (KV_QVL % wpg == 0 || wpg % KV_QVL == 0)));
}

/* QJL's sign sums, a token per vector lane: S[t] = sum of y_i over the set
 * bits i of token t's mb sign bytes (at sig + t mb), read a nibble at a
 * time from the 2 mb tables of 16 sums kv_qsign_tables makes from y (8 mb
 * floats). */
void kv_qsign_tables(const float *y, int mb, float *T);
void kv_qsigns(const float *T, const uint8_t *sig, int mb, int nt, float *S);

/* sum a_i b_i over n floats in one fixed order. */
float kv_qdot(const float *a, const float *b, int n);

/* A tile's values, row t of nt: floats (coded = 0: v is nt x dv), or b-bit
 * codes (coded = 1: token-major in the word layout, kv_qwords_ok, from
 * codes) with the token's nvg group zero points vz and scales vs (nt x nvg,
 * groups of gv channels).  The codes may come in segments of seg tokens
 * (seg > 0, a multiple of KV_QVL / (dv / (32 / bits)) when that is > 1:
 * kivi's groups), segment i at codes + i segstride; seg = 0: one. */
typedef struct {
    int dv, nvg, gv, coded, bits;
    const float *v, *vz, *vs;
    const uint8_t *codes;
    int seg;
    size_t segstride;
} kv_qtile_vals;

/* The double state a tile folds into: [m, l, l2] then u.  u is dv
 * doubles in channel order, except on the coded word path: there it is
 * held per vector lane (no lane sums per tile), kv_qlanes doubles: per
 * piece of KV_QVL words, per plane and then for the zero points, the
 * lanes; then a token count and kv_qlanes pending floats (the lanes of
 * the last tiles, under the current max), folded into the doubles before
 * they would span more than KV_QTILE tokens and before the max rises, so
 * a float sum spans at most KV_QTILE tokens whatever n; kv_qstate_merge
 * gives the channel-order state (partial.h). */

static inline size_t kv_qlanes(int dv, int bits)
{
    int P = 32 / bits, W = dv / P;
    return (size_t)(W < KV_QVL ? KV_QVL : W) * (size_t)(P + 1);
}

static inline size_t kv_qstate_len(const kv_qtile_vals *tv)
{
    size_t nl = tv->coded ? kv_qlanes(tv->dv, tv->bits) : 0;
    return tv->coded ? 4 + nl + (nl + 1) / 2 : 3 + (size_t)tv->dv;
}

/* The empty state of len doubles. */
void kv_qstate_clear(double *r, size_t len);

/* st (channel order) <- merge(st, r); tmp holds KV_PSTATE_LEN(dv) doubles. */
void kv_qstate_merge(double *st, const double *r, const kv_qtile_vals *tv, double *tmp);

/* Scratch floats kv_qfold_tile needs in U. */
#define KV_QU_FLOATS(dv) (2 * (size_t)(dv) + 17 * KV_QVL)

/* The largest of s[0..nt) (by vector lanes; max is exact, so any order
 * gives the same value). */
float kv_qtile_max(const float *s, int nt);

/* The tile's softmax step: s becomes exp(s - m) under the max of r raised
 * to mt (its nl value doubles rescaled), and the sums of s and s^2, by
 * vector lanes in a fixed order, go into r's l and l2. */
void kv_qexp_tile(double *r, float *s, int nt, float mt, int nl);

/* Fold a tile of nt <= KV_QTILE tokens with (scaled) logits s into the
 * double state r (kv_qstate_len): s is overwritten with the weights; U is
 * scratch.  On the coded path s, vz and vs are read (not used) up to
 * KV_QVL floats past the tile: the callers' scratch has them. */
void kv_qfold_tile(double *r, float *s, int nt, const kv_qtile_vals *tv, float *U);

/* Per-thread scratch buffers of floats, grown geometrically. */
typedef struct {
    float **buf;
    size_t *cap;
    int n;
} kv_qscratch;

/* Room for the calling thread (and those of a parallel region it opens):
 * KV_OK or KV_EINTERNAL.  Call outside the parallel region. */
int kv_qscratch_slots(kv_qscratch *w);

/* The calling thread's buffer of at least n floats (NULL: out of memory). */
float *kv_qscratch_get(kv_qscratch *w, size_t n);

/* Bytes held (not counted as the method's state: working memory, like the
 * exact kernels' tiles). */
size_t kv_qscratch_bytes(const kv_qscratch *w);
void kv_qscratch_free(kv_qscratch *w);

#endif
