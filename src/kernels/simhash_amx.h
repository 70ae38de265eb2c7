/* simhash_amx.h - SimHash codes of many vectors on AMX tiles (bfloat16),
 * every bit still kv_dot_fixed's sign (simhash.h's contract).
 *
 *   kv_simhash_amx_codes  the codes of the first whole groups of 32 vectors
 *
 * The dots are approximated in bfloat16 pieces on the tiles, with a proved
 * bound on their distance to kv_dot_fixed's float; a bit whose approximate
 * dot is farther from 0 than the bound has kv_dot_fixed's sign, the others
 * (about 1 in 1000 at d = 64) are recomputed by kv_dot_fixed itself.  Built
 * only with AMX-BF16 and AVX-512 (else it does nothing); at run time the
 * kernel asks Linux for the tile state once and does nothing if refused. */
#ifndef KVSTREAM_SIMHASH_AMX_H
#define KVSTREAM_SIMHASH_AMX_H

#include <stddef.h>
#include <stdint.h>

/* As kv_simhash_codes_at (P packed by kv_simhash_pack) for vectors
 * 0 .. m - 1, m the largest multiple of 32 <= nt: returns m, 0 when the
 * tiles are not to be had (or nt < 32), (size_t)-1 when out of memory. */
size_t kv_simhash_amx_codes(const float *P, int L, int K, int d, const float *X, size_t nt, uint32_t *codes, size_t ts,
                            size_t ls);

#endif
