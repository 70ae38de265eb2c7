/* simhash.c - SimHash codes, register blocked (simhash.h).
 *
 * The hyperplanes are held in blocks of 16 (lanes), transposed: block j's
 * element c of its 16 planes is one vector.  A tile of TT vectors keeps 8
 * accumulators per vector (kv_dot_fixed's lanes: element c goes to
 * accumulator c mod 8, in increasing c, one fused multiply-add each as
 * kv_madd), so a block's load serves TT vectors and every accumulator is a
 * register; the 8 are then summed by kv_dot_fixed's tree, lane-wise, and
 * the 16 signs become 16 bits at once.  The tile is the outer loop: its
 * vectors stay in L1 while the planes stream from L2. */
#include "kernels/simhash.h"
#include <stdlib.h>
#include <string.h>
#include "kernels/dot.h"

#pragma GCC diagnostic ignored "-Wpsabi" /* the vectors stay inside this file */

#define PB 16 /* hyperplanes per block (lanes) */
#define TT 3  /* vectors per tile: 24 accumulators */

typedef float v16 __attribute__((vector_size(PB * sizeof(float))));

static inline v16 bc(float x) { return (v16){ x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x }; }

/* *c += a * b lane-wise, fused exactly when kv_madd8 fuses */
static inline void madd16(v16 *c, v16 a, v16 b)
{
#if defined(__AVX512F__)
    *c = (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)*c);
#else
    kv_dot_v8 c0, c1, a0, a1, b0, b1;
    memcpy(&c0, c, 32), memcpy(&c1, (char *)c + 32, 32);
    memcpy(&a0, &a, 32), memcpy(&a1, (char *)&a + 32, 32);
    memcpy(&b0, &b, 32), memcpy(&b1, (char *)&b + 32, 32);
    kv_madd8(&c0, &a0, &b0);
    kv_madd8(&c1, &a1, &b1);
    memcpy(c, &c0, 32), memcpy((char *)c + 32, &c1, 32);
#endif
}

size_t kv_simhash_len(int np, int d) { return (size_t)(np + PB - 1) / PB * PB * (size_t)d; }

void kv_simhash_pack(const float *H, int np, int d, float *P)
{
    size_t nb = (size_t)(np + PB - 1) / PB;
    memset(P, 0, sizeof(float) * nb * PB * (size_t)d);
    for (int j = 0; j < np; j++)
        for (int c = 0; c < d; c++) P[((size_t)(j / PB) * d + c) * PB + j % PB] = H[(size_t)j * d + c];
}

/* the sign bits of TT vectors x[t] against every block: 16 bits per block
 * into w[t nw ..], nw 64-bit words a vector */
static void tile_bits(const float *P, size_t nb, int d, const float *const *x, uint64_t *w, size_t nw)
{
    memset(w, 0, sizeof(uint64_t) * nw * TT);
    for (size_t b = 0; b < nb; b++) {
        const float *pb = P + b * (size_t)d * PB;
        v16 acc[TT][8];
        for (int t = 0; t < TT; t++)
            for (int j = 0; j < 8; j++) acc[t][j] = (v16){ 0 };
        int c0 = 0;
        for (; c0 + 8 <= d; c0 += 8)
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                v16 h;
                memcpy(&h, pb + (size_t)(c0 + j) * PB, sizeof h);
                for (int t = 0; t < TT; t++) madd16(&acc[t][j], h, bc(x[t][c0 + j]));
            }
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) /* the tail: element c0 + j into accumulator j */
            if (c0 + j < d) {
                v16 h;
                memcpy(&h, pb + (size_t)(c0 + j) * PB, sizeof h);
                for (int t = 0; t < TT; t++) madd16(&acc[t][j], h, bc(x[t][c0 + j]));
            }
        for (int t = 0; t < TT; t++) {
            v16 o = ((acc[t][0] + acc[t][4]) + (acc[t][1] + acc[t][5])) + ((acc[t][2] + acc[t][6]) + (acc[t][3] + acc[t][7]));
            uint64_t m = 0;
            for (int i = 0; i < PB; i++) m |= (uint64_t)(o[i] >= 0.0f) << i;
            w[(size_t)t * nw + b / 4] |= m << (16 * (b % 4));
        }
    }
}

int kv_simhash_codes(const float *P, int L, int K, int d, const float *X, size_t nt, uint32_t *codes)
{
    size_t np = (size_t)L * K, nb = (np + PB - 1) / PB, nw = nb / 4 + 1;
    uint64_t *w = malloc(sizeof(uint64_t) * nw * TT), mask = (UINT64_C(1) << K) - 1;
    if (!w) return 1;
    for (size_t t0 = 0; t0 < nt; t0 += TT) {
        const float *x[TT];
        for (size_t t = 0; t < TT; t++) x[t] = X + (t0 + t < nt ? t0 + t : nt - 1) * (size_t)d; /* short tile: repeat the last */
        tile_bits(P, nb, d, x, w, nw);
        for (size_t t = 0; t < TT && t0 + t < nt; t++)
            for (size_t l = 0; l < (size_t)L; l++) {
                size_t pos = l * (size_t)K, i = pos / 64, sh = pos % 64;
                const uint64_t *wt = w + t * nw;
                uint64_t v = wt[i] >> sh;
                if (sh && sh + (size_t)K > 64) v |= wt[i + 1] << (64 - sh);
                codes[(t0 + t) * L + l] = (uint32_t)(v & mask);
            }
    }
    free(w);
    return 0;
}
