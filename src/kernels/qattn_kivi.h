/* qattn_kivi.h - kivi's query kernel over whole group records, in the
 * compressed domain (the building blocks and the word layout are
 * kernels/qattn.h's; this is the layout kivi uses when it can).
 *
 * A group record of G tokens holds, in order:
 *   key codes   nb = ceil(d / P) blocks of G 32-bit words, P = 32 / b: word t
 *               of block j holds channels [j P, j P + P) of token t (the word
 *               layout of qattn.h: a token per vector lane);
 *   key (z, s)  d half pairs;
 *   value codes the "channel words": G / B blocks of dv words, B = 32 / b
 *               tokens per word: word c of block i holds channel c of tokens
 *               [i B, i B + B), token i B + k at bits [k b, k b + b) (a
 *               channel per vector lane);
 *   value (z, s) G nvg half pairs, token-major (groups of gv = min(G, dv)
 *               channels).
 * It applies (kv_qk_ok) when b is 2, 4 or 8, G and dv are multiples of 16
 * and nvg = dv / gv is a power of two; kivi keeps qattn.h's token-major
 * value codes otherwise.  The record bytes are the same either way.
 *
 * Answering: tiles of KV_QTILE tokens (whole groups when G <= KV_QTILE,
 * else pieces of one); per group the key scales fold into the query
 * (qs = q s, qz = q . z), per tile the logits, a max-shifted softmax in
 * float, the value sums in float per channel (weights times the token's
 * group scale, plus the weights times the zero points), then folded into
 * the double state in channel order (kernels/partial.h).  Under AVX-512,
 * 2-bit codes are read a nibble (two codes) at a time by a lookup in a
 * 16-entry float table (vpermps): keys a token per lane with a table per
 * channel pair and group, values a channel per lane with a table per token
 * pair and value group; 4- and 8-bit codes are masked in place, converted
 * and multiplied.  Elsewhere (AVX2, portable) the same sums by GCC vectors.
 * Loops have a fixed order: a tile's sums are the same bits whichever
 * thread computes them. */
#ifndef KVSTREAM_QATTN_KIVI_H
#define KVSTREAM_QATTN_KIVI_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"

typedef struct {
    int d, dv, G, bits, gv, nvg, nb, kq; /* kq = nb P key positions */
    size_t kcb, vcb, rec;                /* key code bytes, value code bytes, record bytes */
    size_t kzs, vco, vzs;                /* offsets of key (z, s), value codes, value (z, s) */
} kv_qk_plan;

/* 1 if the channel-word value layout (and this kernel) applies. */
int kv_qk_ok(int bits, int G, int dv);

/* The plan of a record (any b in {2, 4, 8}, G, d, dv: the offsets hold for
 * the token-major layout too). */
void kv_qk_plan_init(kv_qk_plan *p, int bits, int G, int d, int dv);

/* Element position of value code (t, c) of a group in the channel words
 * (kv_quantise's position, b bits each). */
static inline size_t kv_qk_vpos(const kv_qk_plan *p, int t, int c)
{
    int B = 32 / p->bits;
    return (size_t)(t / B) * (size_t)p->dv * B + (size_t)c * B + (size_t)(t % B);
}

/* Floats of scratch kv_qk_fold needs for nq queries. */
size_t kv_qk_scratch_floats(const kv_qk_plan *p, int nq);

/* Fold the groups [g0, g1) of recs (plan p) into the nq channel-order
 * states st (KV_PSTATE_LEN(dv) doubles each); qp: the nq queries times
 * the attention scale (d floats each); w: kv_qk_scratch_floats.  Each
 * tile's loops prefetch the next tile's records, of groups below gend
 * (>= g1: those held, so a slice's last tile fetches the next slice's
 * first). */
void kv_qk_fold(const kv_qk_plan *p, const uint8_t *recs, int64_t g0, int64_t g1, int64_t gend, const float *qp, int nq,
                double *st, float *w);

/* Checkpoints hold value codes token-major (kv_quantise's packing of each
 * token's dv codes, qattn.h's layout), whichever layout is in use, so that
 * they restore into either.  put: what kv_buf_put_arr of the n records
 * would write, their value codes token-major (b fails without memory);
 * in: n records read so, to the channel words in place (-1: no memory). */
void kv_qk_put_records(const kv_qk_plan *p, const uint8_t *recs, size_t n, kv_buf *b);
int kv_qk_records_in(const kv_qk_plan *p, uint8_t *recs, size_t n);

#endif
