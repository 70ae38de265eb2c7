/* qjl_quant.h - qjl's 2-bit values quantised straight into bit planes
 * (methods/qjl.c, kernels/qjl_kern.h), bit for bit kv_quantise's codes. */
#ifndef KVSTREAM_QJL_QUANT_H
#define KVSTREAM_QJL_QUANT_H

#include <stdint.h>

/* A token's dv values v (dv, gv multiples of 16, gv | dv) in groups of gv:
 * zs[2 g] (zero point, scale: halves) and the codes as planes, bits[2 k]
 * plane 0 and bits[2 k + 1] plane 1 of channels 16 k .. 16 k + 15 (bit i:
 * channel 16 k + i), all as kv_quantise (methods/common/quant.h) gives
 * them.  Returns 0; -1 when a group is beyond half (as kv_quantise); 1
 * when not taken (a build without AVX-512, or a group holding a zero or a
 * NaN, where the order of kv_quantise's scan decides the zero point's
 * sign): quantise with kv_quantise then. */
int kv_qjl_quant_planes(const float *v, int dv, int gv, uint16_t *bits, uint16_t *zs);

#endif
