/* qjl_kern.h - QJL's own kernels (methods/qjl.c): the sketch S k with the
 * rows of S in vector lanes, and the sign sums over sign bits stored in
 * 16-key blocks.
 *
 * Projection.  S (m x d) is kept in blocks of KV_QJL_RB rows (16 with
 * AVX-512 and FMA, else 8; m is a multiple of 8, so a last block of 8 rows
 * under AVX-512), each block column-major: row r of block b, column c at
 * ST[b KV_QJL_RB d + c w_b + r] (w_b the block's rows).  A vector holds
 * w_b rows' partial sums, so a key's m dots need no horizontal sums: eight
 * accumulators per key, element c into accumulator c mod 8, in order, then
 * kv_dot_fixed's tree (kernels/dot.h) across them: each dot is bitwise
 * kv_dot_fixed(S_j, k), so a sign bit is what the fixed-order dot gives.
 * With AVX-512 and d a multiple of 8 the layout is instead row pairs
 * (qjl_kern.c, pair_put): a vector holds two rows' 8 columns of a chunk,
 * a key's 8 columns broadcast to both halves, so lane i sums column
 * c = i (mod 8) of its row in order (kv_dot_fixed's lane sums; 16 rows x 2
 * keys per pass, 16 FMAs to 10 loads), then the tree by pairwise merges of
 * the vectors: bitwise the same dots.
 *
 * Sign bits.  The keys' m / 8 = mb sign bytes are stored in blocks of 16
 * keys (16 mb bytes): chunks of 4 bytes (then one of 2 and one of 1 for the
 * mb mod 4 left), each chunk key-major within the block (key l's bytes at
 * l w), so a chunk loads as one vector of 16 words (or 16-bit halves or
 * bytes, widened), a key per lane: no gathers.  kv_qjl_signs adds the
 * nibble tables of kv_qsign_tables (kernels/qattn.h) in kv_qsigns' order
 * (nibble i into chain i mod 2, in order), so the sums are bitwise
 * kv_qsigns'; two blocks at a time (four chains in flight). */
#ifndef KVSTREAM_QJL_KERN_H
#define KVSTREAM_QJL_KERN_H

#include <stddef.h>
#include <stdint.h>

#if defined(__AVX512F__) && defined(__FMA__)
#define KV_QJL_RB 16
#else
#define KV_QJL_RB 8
#endif
#define KV_QJL_KB 16 /* keys per sign block */

/* offset of sign byte j of key t in the block layout */
static inline size_t kv_qjl_sig_off(int mb, int64_t t, int j)
{
    size_t base = (size_t)(t / KV_QJL_KB) * KV_QJL_KB * (size_t)mb, l = (size_t)(t % KV_QJL_KB);
    int w4 = mb / 4 * 4;
    if (j < w4) return base + (size_t)(j / 4) * 4 * KV_QJL_KB + l * 4 + (size_t)(j % 4);
    base += (size_t)w4 * KV_QJL_KB;
    if (mb - w4 >= 2) {
        if (j < w4 + 2) return base + l * 2 + (size_t)(j - w4);
        base += 2 * KV_QJL_KB;
    }
    return base + l;
}

/* key t's mb sign bytes row[] into the layout (a new block is zeroed first) */
void kv_qjl_sig_put(uint8_t *sig, int mb, int64_t t, const uint8_t *row);
/* key t's mb sign bytes out of the layout */
void kv_qjl_sig_get(const uint8_t *sig, int mb, int64_t t, uint8_t *row);

/* row j of S (d floats) into the blocked layout ST (m d floats) */
void kv_qjl_row_put(float *ST, int m, int d, int j, const float *row);

/* out[t m + j] = kv_dot_fixed(S_j, x[t], d), bitwise, for t < nt, j < m */
void kv_qjl_dots(const float *ST, int m, int d, const float *const *x, int nt, float *out);

/* sg (m / 8 bytes) = the bits dots[j] >= 0, bit j mod 8 of byte j / 8 */
void kv_qjl_pack_signs(const float *dots, int m, uint8_t *sg);

/* out[t] = |k[t]| for t < nt: the sum of k_x^2 over x in order, in double
 * (each product exact in double, so fused or not it is the same sum),
 * then rounded to float; several keys' chains at once */
void kv_qjl_norms(const float *const *k, int nt, int d, float *out);

/* S[t] = the sign sums of keys t < nt of the block layout from sig (the
 * first key of a block), from the 2 mb tables T: bitwise kv_qsigns' sums.
 * S is written up to nt rounded up to a multiple of 16. */
void kv_qjl_signs(const float *T, const uint8_t *sig, int mb, int nt, float *S);

/* 2-bit values in bit planes (qjl.c, when dv and the value group gv are
 * multiples of 16), in blocks of 16 tokens like the sign bits: a block is
 * 4 dv bytes, 16-channel chunk k at byte 64 k, one 32-bit word per channel
 * (lane c of the chunk at 4 c): bit l = plane 0 (code & 1) of the block's
 * token l, bit 16 + l = plane 1 (code >> 1).  A vector load of a chunk is
 * then 16 channels' bits of 16 tokens, the tokens' quads as nibbles.
 * kv_qjl_planes_put: token t's packed codes of kv_quantise (methods/common/
 * quant.h; dv / 4 bytes) into the layout vq (a new block is zeroed first);
 * kv_qjl_planes_or: the same from the planes of 16 channels, bits[2 k]
 * plane 0 and bits[2 k + 1] plane 1 of chunk k (methods/qjl_quant.h);
 * kv_qjl_planes_get: out again as packed codes. */
void kv_qjl_planes_put(const uint8_t *packed, int dv, uint8_t *vq, int64_t t);
void kv_qjl_planes_or(const uint16_t *bits, int dv, uint8_t *vq, int64_t t);
/* n tokens' packed rows (dv / 4 bytes each, as a checkpoint has them) at
 * vq into the layout in place, a block at a time (dv <= 1024) */
void kv_qjl_planes_from_rows(uint8_t *vq, int dv, int64_t n);
void kv_qjl_planes_get(const uint8_t *vq, int dv, int64_t t, uint8_t *packed);

/* Fold a tile of nt <= KV_QTILE tokens with (scaled) logits s (read up to
 * KV_QVL floats past nt; overwritten with the weights) into the double
 * state r (partial.h, channel order): the max-shifted float exp, l, l2,
 * and u_c += sum_t w_t (s_tg c_tc + z_tg) as, per 16 channels, float sums
 * over the tile of a_t = w_t s_tg at the tokens whose plane bit is set:
 * per quad of tokens and value group a table of the 16 subset sums of its
 * a_t (each in token order), looked up by the quad's nibble of each plane
 * (a permute: no code is converted, no mask), added quad by quad; then
 * p0 + 2 p1 + sum_t w_t z_tg.  Each channel is a float sum in which a term
 * a_t meets at most nt + 3 roundings (3 in its table, one per later quad,
 * 2 at the end), then the double.  codes: the tile's first block (the
 * tile starts on a block); vz, vs: the tile's zero points and scales (nt x
 * dv / gv, read up to KV_QVL floats past); scratch: (nt rounded up to 16)
 * dv / gv + KV_QVL + dv / gv floats. */
void kv_qjl_fold_planes(double *r, float *s, int nt, int dv, int gv, const uint8_t *codes, const float *vz,
                        const float *vs, float *scratch);

#endif
