/* tqscan.h - TurboQuant's one-query kernels on the packed rows
 * (methods/turboquant.c, ALGORITHMS.md section 7b), in the rotated domain.
 *
 * Key logits by lookup tables: the codes of a row are read 4 bits at a
 * time (g = 4 / b channels per lookup for b = 1, 2; one channel for b = 3,
 * 4), and table j holds, for each 4-bit index x, sum over the g channels c
 * of lookup j of q[c] c[code of c in x] (made once per query), so a key's
 * logit is a sum of d / g table entries, 16 rows per vector (the table
 * looked up by a vector permute).  Value sums: per channel, 16 rows'
 * centroids times the rows' weights in 16 lanes, added across the rows,
 * the lanes summed once per call.
 *
 * Rows are held in blocks of 16 (KV_TQ_BLK), a block's bytes interleaved
 * so that 16 rows' words are one contiguous load, never a gather
 * (kv_tq_byte_at): the row's first nrm bytes (its float norms) as 16
 * floats per norm, then each code byte j of the row as 16 bytes (one per
 * row).  A block of rows of R bytes takes 16 R bytes: the same memory as
 * 16 rows.  Reads stay inside each field's bytes (the last partial word
 * is read up to the field's end, zeros above), so no slack is needed. */
#ifndef KVSTREAM_TQSCAN_H
#define KVSTREAM_TQSCAN_H

#include <stddef.h>
#include <stdint.h>
#include "methods/common/tqcodec.h"

#define KV_TQ_SCAN_MAX 256 /* rows per call at most */
#define KV_TQ_BLK 16       /* rows per interleaved block */

/* Where byte j of a row's (row-major) bytes lies in its block, for the row
 * at lane l < KV_TQ_BLK of the block, the row's first nrm (a multiple of
 * 4) bytes being floats: float f of lane l at 64 f + 4 l, code byte j >= nrm
 * at 16 j + l. */
static inline size_t kv_tq_byte_at(size_t j, size_t nrm, int l)
{
    return j < nrm ? 16 * (j & ~(size_t)3) + 4 * (size_t)l + (j & 3) : 16 * j + (size_t)l;
}

/* Tables for book (bits >= 1) of one query: returns their count nl (<= d);
 * T gets nl x 16 floats (d x 16 floats suffice). */
int kv_tq_tables(const kv_tq_book *book, const float *q, float *T);

/* out[r] = sum_j T_j[index j of row r] = sum_i q[i] c[code i of row r] (to
 * rounding), r < n <= KV_TQ_SCAN_MAX; row r is lane r % 16 of block r / 16,
 * whose field of codes (nb = kv_tq_code_bytes bytes, at row byte o >= nrm)
 * starts at codes + (r / 16) stride (codes = the first block + 16 o). */
void kv_tq_scan_dots(const kv_tq_book *book, const float *T, const uint8_t *codes, size_t nb, size_t stride, int n,
                     float *out);

/* u[i] += sum_r w[r] c[code i of row r], r < n <= KV_TQ_SCAN_MAX, w[r] for
 * r < n rounded up to 16 (the pad zero); codes as for kv_tq_scan_dots. */
void kv_tq_scan_axpys(const kv_tq_book *book, const uint8_t *codes, size_t nb, size_t stride, int n, const float *w,
                      float *u);

/* One tile of n <= KV_TQ_SCAN_MAX rows in blocks (block k at rows + k
 * stride, kv_tq_byte_at: |k| row byte 0, |v| 4, prod's |r| 8): lg[r] (the key dots) becomes scale
 * |k| (lg[r] + coef |r| sg[r]) (prod) or scale |k| lg[r], the state's max
 * is raised to the tile's (kv_partial_raise_max), lg[r] = exp(lg[r] - max)
 * and its sum and sum of squares (16 lanes, then a fixed tree) are added
 * to st, then lg[r] *= |v| (the value sum's weights), zero up to a
 * multiple of 16 (lg holds that many floats). */
void kv_tq_scan_weights(const uint8_t *rows, size_t stride, int n, int prod, float coef, float scale, float *lg,
                        const float *sg, double *st, int dv);

/* The m <= KV_TQ_BLK first rows of the block at blk (rows of row bytes,
 * the first nrm floats) row-major: out[l row + j] = row l's byte j; out
 * holds m row + 3 bytes (the last row's codes are copied by 4-byte words:
 * up to 3 bytes past it are overwritten). */
void kv_tq_block_rows(const uint8_t *blk, size_t row, size_t nrm, int m, uint8_t *out);

/* Bytes [j0, j0 + n) of the row at lane l of the block at blk (its first
 * nrm bytes floats, kv_tq_byte_at) to (put) or from x, x holding them
 * row-major. */
void kv_tq_row_copy(uint8_t *blk, size_t nrm, int l, size_t j0, size_t n, uint8_t *x, int put);

/* y[i] = sum_j RT[i dv + j] u[j] in double, j in order (one chain per
 * output; y and u distinct): a rotated-domain sum back, RT = Pi^T. */
void kv_tq_rotate_back(const float *RT, int dv, const double *u, double *y);

/* out[t d + j] = sum_c x[t d + c] RT[c d + j] (c in order, one chain per
 * output), t < nt: the nt vectors x (contiguous) times the matrix whose
 * transpose RT is (Pi x with RT = Pi^T), 16 outputs of 8 vectors at a time. */
void kv_tq_rotate(const float *RT, int d, const float *x, int nt, float *out);

#endif
