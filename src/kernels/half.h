/* half.h - IEEE half (binary16) <-> float32 for arrays of keys and values
 * held in half precision (exact's store=f16).
 *
 * half -> float is exact for every finite half.  With AVX-512 or F16C it is
 * the hardware conversion (vcvtph2ps), else a portable bit-level path; both
 * give the same floats, so the float32 arithmetic after them is bitwise the
 * same on any build. */
#ifndef KVSTREAM_HALF_H
#define KVSTREAM_HALF_H

#include <stddef.h>
#include <stdint.h>

/* out[i] = h[i] as a float, i < n (h finite halves). */
void kv_half_to_f32(const uint16_t *h, size_t n, float *out);

/* h[i] = x[i] as a half, i < n, when every x[i] is exactly a finite half
 * (returns n); else the index of the first x[i] that is not (h then partly
 * written). */
size_t kv_f32_to_half_exact(const float *x, size_t n, uint16_t *h);

#endif
