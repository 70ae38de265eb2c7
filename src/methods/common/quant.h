/* quant.h - the building blocks of the quantised caches (kivi, qjl):
 * IEEE half precision for scales and zero points, b-bit asymmetric
 * (min, scale) quantisation into packed codes, and a checksummed
 * checkpoint envelope.
 *
 * A quantised group of elements x_0 .. x_{n-1} stores a zero point z (the
 * minimum, rounded to half) and a scale s (half, rounded so that z + s L
 * reaches the maximum, L = 2^b - 1), and a code c_i in [0, L] per element,
 * b bits each, packed little-endian into bytes (b in {1, 2, 4, 8}, so a
 * code never straddles a byte).  x_i is read back as z + s c_i.  A group
 * whose zero point or scale is beyond half's range (|x| > 65504) cannot be
 * stored: the quantiser says so and the caller keeps those tokens in float.
 *
 * Checkpoints: every code pattern is a valid state, so a flipped code
 * cannot be told from a real one field by field; the envelope (payload
 * length, a 64-bit hash of the payload, the payload) rejects any change.
 * It is written without a copy of the payload: the save function walks the
 * state twice (hash, then the bytes straight into the output), and read
 * from a refilling reader in pieces (hash, then parse). */
#ifndef KVSTREAM_QUANT_H
#define KVSTREAM_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include "core/buf.h"
#include "core/kverr.h"
#include "methods/common/tokring.h"

/* IEEE binary16, round to nearest even (overflow gives +-inf). */
uint16_t kv_half_from_float(float f);
float kv_half_to_float(uint16_t h);

/* Bytes holding n codes of b bits. */
static inline size_t kv_qcode_bytes(int bits, size_t n) { return (n * (size_t)bits + 7) / 8; }

static inline unsigned kv_qcode_get(const uint8_t *codes, int bits, size_t i)
{
    size_t bit = i * (size_t)bits;
    return (codes[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1);
}

/* Quantise n elements x[i * stride] to codes at positions pos + i * pstep
 * of the packed array codes (the caller zeroed it), with b bits; the half
 * zero point and scale go to zs[0], zs[1].  Returns 0, or -1 when they do
 * not fit in half (nothing useful written then). */
int kv_quantise(const float *x, size_t n, size_t stride, int bits, uint8_t *codes, size_t pos, size_t pstep,
                uint16_t *zs);

/* x[i * stride] = z + s c for the n codes written by kv_quantise. */
void kv_dequantise(const uint8_t *codes, size_t pos, size_t pstep, size_t n, int bits, const uint16_t *zs, float *x,
                   size_t stride);

/* out[i] = z[i] + s[i] c for the n consecutive codes from position pos
 * (per-element zero points and scales: KIVI's per-channel keys, a row at
 * a time); the same arithmetic as kv_dequantise. */
void kv_dequantise_row(const uint8_t *codes, size_t pos, size_t n, int bits, const float *z, const float *s,
                       float *out);

/* 1 if zs holds a finite zero point and a finite scale >= 0 (checkpoints). */
int kv_qparams_ok(const uint16_t *zs);

/* Checkpoint envelope: out gets the length of what save(obj) appends, its
 * hash, then those bytes (save runs twice; it must be deterministic). */
void kv_qsave_sealed(kv_buf *out, kv_buf_saver save, const void *obj);

/* Read an envelope written by kv_qsave_sealed from in; *payload then reads
 * its bytes (what = in->what).  KV_EINPUT "checkpoint: WHAT state ..." when
 * it is truncated or its hash does not match. */
int kv_qload_sealed(kv_rd *in, kv_rd *payload, kv_err *err);

/* The float part both quantised caches (kivi, qjl) end their payload with,
 * after their quantised tokens: the tail ring (first index >= tail_from)
 * and the edge ring (kv_tokring_load, at most lim tokens each), every
 * token below known, held + both rings' tokens <= lim; then the payload
 * must end.  On any failure both rings are left empty, as create made
 * them. */
int kv_qrings_load(kv_tokring *tail, kv_tokring *edge, kv_rd *payload, int64_t tail_from, int64_t known,
                   int64_t held, int64_t lim, int64_t n_total, kv_err *err);

#endif
