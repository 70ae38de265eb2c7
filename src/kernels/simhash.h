/* simhash.h - SimHash codes: the signs of many hyperplanes' dots with a
 * vector, packed K bits to a code, each dot bitwise kv_dot_fixed's.
 *
 *   kv_simhash_len    floats of the packed hyperplanes
 *   kv_simhash_pack   lay np hyperplanes of d out for kv_simhash_codes
 *   kv_simhash_codes  codes[t L + l] = table l's K-bit code of vector t
 *   kv_simhash_codes_at  the same at codes[t ts + l ls] (ts = 1, ls = nt:
 *                     table by table)
 *
 * A code's bit b of table l is set when kv_dot_fixed(h_{l K + b}, x, d) >= 0
 * (the same float, so the same bit, as that dot: kv_dot_fixed's 8 chains
 * and tree, run on 16 hyperplanes at once), and a vector's codes do not
 * depend on the others hashed with it. */
#ifndef KVSTREAM_SIMHASH_H
#define KVSTREAM_SIMHASH_H

#include <stddef.h>
#include <stdint.h>

size_t kv_simhash_len(int np, int d);
void kv_simhash_pack(const float *H, int np, int d, float *P);
/* nt vectors of d at X (rows); L K <= np hyperplanes; K <= 24; returns
 * nonzero when out of memory */
int kv_simhash_codes(const float *P, int L, int K, int d, const float *X, size_t nt, uint32_t *codes);
int kv_simhash_codes_at(const float *P, int L, int K, int d, const float *X, size_t nt, uint32_t *codes, size_t ts,
                        size_t ls);

#endif
