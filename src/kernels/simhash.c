/* simhash.c - SimHash codes, register blocked (simhash.h).
 *
 * The hyperplanes are held in blocks of 16 (the lanes), transposed: block
 * b's element c of its 16 planes is one vector.  kv_dot_fixed sums element
 * c into its lane c mod 8 (one fused multiply-add each, as kv_madd), then
 * adds the 8 lanes by a fixed tree; here each of those 8 chains is run on
 * its own, for a tile of TT vectors x NB blocks at once: TT NB accumulators
 * in registers, each step TT broadcasts and NB block loads for TT NB
 * multiply-adds.  A chain's sums go to a small scratch, and the tree then
 * adds the 8 chains lane-wise: 16 dots, each kv_dot_fixed's bits, whose
 * signs become 16 bits at once.  Each lane's arithmetic is its own, so a
 * vector's bits do not depend on its tile mates (the vectors past the last
 * whole tile go one at a time: a lone query spends no lanes on repeats).
 * Vectors go VB at a time, and a group of NB blocks (64 planes) is the
 * outer loop: its planes stay in L1 while the block's tiles pass (were the
 * tile outer, every tile would stream all the planes from L2), and each
 * table's codes are then written for the block's vectors in turn. */
#include "kernels/simhash.h"
#include <stdlib.h>
#include <string.h>
#include "kernels/dot.h"
#include "kernels/simhash_amx.h"

#pragma GCC diagnostic ignored "-Wpsabi" /* the vectors stay inside this file */

#define PB 16 /* hyperplanes per block (lanes) */
#define TT 6  /* vectors per tile: 24 accumulators, 4 plane loads and 6 broadcasts per 24 multiply-adds */
#define AMX_MIN 256 /* vectors from which kv_simhash_amx_codes is tried */
#define NB 4  /* blocks per tile: TT NB accumulators, TT + NB loads per TT NB multiply-adds */
#define VB 252 /* vectors per block (whole tiles): their rows in L2 */

typedef float v16 __attribute__((vector_size(PB * sizeof(float))));

static inline v16 bc(float x) { return (v16){ x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x }; }

/* *c += *a * *b lane-wise, fused exactly when kv_madd8 fuses */
static inline void madd16(v16 *c, const v16 *a, const v16 *b)
{
#if defined(__AVX512F__)
    *c = (v16)_mm512_fmadd_ps((__m512)*a, (__m512)*b, (__m512)*c);
#else
    kv_dot_v8 c0, c1, a0, a1, b0, b1;
    memcpy(&c0, c, 32), memcpy(&c1, (char *)c + 32, 32);
    memcpy(&a0, a, 32), memcpy(&a1, (const char *)a + 32, 32);
    memcpy(&b0, b, 32), memcpy(&b1, (const char *)b + 32, 32);
    kv_madd8(&c0, &a0, &b0);
    kv_madd8(&c1, &a1, &b1);
    memcpy(c, &c0, 32), memcpy((char *)c + 32, &c1, 32);
#endif
}

/* 16 floats at p, unaligned (a direct vector load: a memcpy through the
 * stack had the compiler store two halves and load the whole, which the
 * store buffer cannot forward) */
static inline v16 ld16(const float *p)
{
#if defined(__AVX512F__)
    return (v16)_mm512_loadu_ps(p);
#else
    v16 h;
    memcpy(&h, p, sizeof h);
    return h;
#endif
}

/* bit i set when o[i] >= 0 (not for NaN) */
static inline uint64_t signs(const v16 *o)
{
#if defined(__AVX512F__)
    return _mm512_cmp_ps_mask((__m512)*o, _mm512_setzero_ps(), _CMP_GE_OQ);
#else
    uint64_t m = 0;
    for (int i = 0; i < PB; i++) m |= (uint64_t)((*o)[i] >= 0.0f) << i;
    return m;
#endif
}

size_t kv_simhash_len(int np, int d) { return (size_t)(np + NB * PB - 1) / (NB * PB) * NB * PB * (size_t)d; }

void kv_simhash_pack(const float *H, int np, int d, float *P)
{
    memset(P, 0, sizeof(float) * kv_simhash_len(np, d));
    for (int j = 0; j < np; j++)
        for (int c = 0; c < d; c++) P[((size_t)(j / PB) * d + c) * PB + j % PB] = H[(size_t)j * d + c];
}

/* the sign bits of tt <= TT vectors x[t] against one group of NB blocks
 * (NB PB planes at pb): 64 bits a vector into w[t]; S: scratch of 8 TT
 * NB vectors.  Instantiated with a constant tt (accumulators in
 * registers). */
static inline __attribute__((always_inline)) void group_bits_(const float *pb, int d, const float *const *x,
                                                              uint64_t *w, v16 *S, int tt)
{
    for (int j = 0; j < 8 && j < d; j++) { /* chain j: elements j, j + 8, ... */
        v16 acc[TT][NB];
        for (int t = 0; t < tt; t++)
            for (int b = 0; b < NB; b++) acc[t][b] = (v16){ 0 };
        for (int c = j; c < d; c += 8) {
            v16 h[NB];
            for (int b = 0; b < NB; b++) h[b] = ld16(pb + ((size_t)b * d + c) * PB);
            for (int t = 0; t < tt; t++) {
                v16 xb = bc(x[t][c]);
                for (int b = 0; b < NB; b++) madd16(&acc[t][b], &h[b], &xb);
            }
        }
        for (int t = 0; t < tt; t++)
            for (int b = 0; b < NB; b++) S[(j * TT + t) * NB + b] = acc[t][b];
    }
    for (int j = d; j < 8; j++) /* d < 8: the empty chains are 0 */
        for (int i = 0; i < TT * NB; i++) S[j * TT * NB + i] = (v16){ 0 };
    for (int t = 0; t < tt; t++) {
        uint64_t m = 0;
        for (int b = 0; b < NB; b++) {
            const v16 *a = S + t * NB + b; /* a[j TT NB]: chain j */
            size_t st = TT * NB;
            v16 o = ((a[0] + a[4 * st]) + (a[st] + a[5 * st])) + ((a[2 * st] + a[6 * st]) + (a[3 * st] + a[7 * st]));
            m |= signs(&o) << (16 * b);
        }
        w[t] = m;
    }
}

/* TT vectors, or one (a lone query, a short tile's rest: no lanes spent
 * on repeats) */
static void group_bits(const float *pb, int d, const float *const *x, uint64_t *w, v16 *S)
{
    group_bits_(pb, d, x, w, S, TT);
}

static void group_bits1(const float *pb, int d, const float *const *x, uint64_t *w, v16 *S)
{
    group_bits_(pb, d, x, w, S, 1);
}

/* the bits of vectors X[v0 .. v0 + vn), vn <= ws <= VB, against the ng
 * groups: group g's word of vector v0 + t at w[g ws + t].  The group is the outer
 * loop: its planes (NB PB d floats) stay in L1 while the vectors' tiles
 * pass, the vectors (VB d floats) in L2 while the groups pass. */
static void block_bits(const float *P, size_t ng, int d, const float *X, size_t v0, size_t vn, uint64_t *w, size_t ws,
                       v16 *S)
{
    for (size_t g = 0; g < ng; g++) {
        const float *pb = P + g * NB * (size_t)d * PB;
        for (size_t t0 = 0; t0 < vn;) {
            const float *x[TT];
            size_t tt = vn - t0 >= TT ? TT : 1;
            for (size_t t = 0; t < tt; t++) x[t] = X + (v0 + t0 + t) * (size_t)d;
            if (tt == TT) group_bits(pb, d, x, w + g * ws + t0, S);
            else group_bits1(pb, d, x, w + g * ws + t0, S);
            t0 += tt;
        }
    }
}

int kv_simhash_codes(const float *P, int L, int K, int d, const float *X, size_t nt, uint32_t *codes)
{
    return kv_simhash_codes_at(P, L, K, d, X, nt, codes, (size_t)L, 1);
}

int kv_simhash_codes_at(const float *P, int L, int K, int d, const float *X, size_t nt, uint32_t *codes, size_t ts,
                        size_t ls)
{
    size_t np = (size_t)L * K, ng = (np + NB * PB - 1) / (NB * PB), ws = nt < VB ? (nt ? nt : 1) : VB;
    /* a block's words, group by group (a lone query: ng + 1 words) */
    uint64_t *w = malloc(sizeof(uint64_t) * (ng + 1) * ws), mask = (UINT64_C(1) << K) - 1;
    v16 *S = aligned_alloc(sizeof(v16), sizeof(v16) * 8 * TT * NB); /* vectors: their alignment */
    if (!w || !S) {
        free(w);
        free(S);
        return 1;
    }
    /* many vectors: on the tiles where the build and the kernel allow them
     * (the planes' layout per call pays off from a few hundred) */
    size_t v0 = nt >= AMX_MIN ? kv_simhash_amx_codes(P, L, K, d, X, nt, codes, ts, ls) : 0;
    if (v0 == (size_t)-1) v0 = 0; /* out of memory there: here, in less */
    for (; v0 < nt; v0 += VB) {
        size_t vn = nt - v0 < VB ? nt - v0 : VB;
        block_bits(P, ng, d, X, v0, vn, w, ws, S);
        for (size_t l = 0; l < (size_t)L; l++) { /* table l's bits: word i from bit sh, into word i + 1 */
            size_t pos = l * (size_t)K, i = pos / 64, sh = pos % 64;
            const uint64_t *wi = w + i * ws, *wn = w + (i + 1) * ws;
            uint32_t *cl = codes + v0 * ts + l * ls;
            if (sh + (size_t)K > 64)
                for (size_t t = 0; t < vn; t++) cl[t * ts] = (uint32_t)(((wi[t] >> sh) | (wn[t] << (64 - sh))) & mask);
            else
                for (size_t t = 0; t < vn; t++) cl[t * ts] = (uint32_t)((wi[t] >> sh) & mask);
        }
    }
    free(w);
    free(S);
    return 0;
}
