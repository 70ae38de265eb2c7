/* qattn.h - attention over quantised tiles, in the compressed domain
 * (the kernels behind kivi and qjl).
 *
 * Codes are never decoded to floats with their scales: a b-bit code array
 * is read straight from its bytes in a "layout order" that vectorises
 * (units of KV_QUB bytes widened to 32-bit lanes, each split into its b-bit
 * planes), and
 * whatever multiplies a code - a key's per-channel scale, a value's
 * per-token scale times its softmax weight - is folded into the other
 * operand:
 *     q . k_t = sum_c q_c z_c + sum_c (q_c s_c) code_tc        (kivi keys)
 *     sum_t w_t v_tc = sum_t (w_t s_tj) code_tc + sum_t w_t z_tj  (values, group j)
 * A tile of KV_QTILE tokens gets its logits
 * from the caller, then kv_qfold_tile does the max-shifted softmax in float
 * and folds the tile's sums into the double state (as kernels/attn.c does),
 * so accuracy does not depend on n.  GCC vector extensions: key logits take
 * 16 lanes under AVX-512, 8 otherwise, values 8 lanes; the byte widening is
 * its intrinsic under AVX2 / AVX-512, plain portable C otherwise (the build
 * chooses, -march=native or not); every loop has a
 * fixed order, so a token's logit and a tile's sums are bitwise the same
 * whichever thread computes them.
 *
 * Scratch (kv_qscratch) lives in the caller's state: one buffer per thread,
 * grown geometrically, so answering a query allocates nothing once warm. */
#ifndef KVSTREAM_QATTN_H
#define KVSTREAM_QATTN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define KV_QTILE 32 /* tokens per tile */

/* half -> float for finite halves (scales and zero points are checked
 * finite): the bits shifted into a float, times 2^112, exact for normal and
 * subnormal halves alike, and branch-free so it vectorises. */
static inline float kv_qhalf(uint32_t h)
{
    uint32_t x = (h & 0x7fffu) << 13, y;
    float f;
    memcpy(&f, &x, 4);
    f *= 0x1p112f;
    memcpy(&y, &f, 4);
    y |= (h & 0x8000u) << 16; /* the sign by bits, not a branch */
    memcpy(&f, &y, 4);
    return f;
}

/* n (zero point, scale) half pairs (4 bytes each, any alignment) to z[], s[]. */
static inline void kv_qhalves(const uint8_t *zs, int n, float *z, float *s)
{
    for (int i = 0; i < n; i++) {
        uint32_t w;
        memcpy(&w, zs + 4 * (size_t)i, 4); /* little-endian: z low, s high */
        z[i] = kv_qhalf(w & 0xffffu);
        s[i] = kv_qhalf(w >> 16);
    }
}

/* Bytes per unit: 16 (16 lanes) with AVX-512, else 8.  The layout order,
 * and so which layouts are fast, depends on it (the stored bytes do not). */
#ifndef KV_QUB /* (-DKV_QUB=8 forces 8-byte units: a comparison build) */
#ifdef __AVX512F__
#define KV_QUB 16
#else
#define KV_QUB 8
#endif
#endif

/* 1 if n codes of b bits (b in {2, 4, 8}) unpack in layout order: whole
 * units (n a multiple of 8 KV_QUB / b). */
static inline int kv_qfast(int bits, int n)
{
    return (bits == 2 || bits == 4 || bits == 8) && n % (8 * KV_QUB / bits) == 0;
}

/* The element (channel) at layout position p of a run of b-bit codes:
 * unit u = p / (8 KV_QUB / b), plane k, lane i < KV_QUB hold element
 * (KV_QUB u + i)(8/b) + k. */
static inline int kv_qperm(int bits, int p)
{
    int per = 8 * KV_QUB / bits, u = p / per, r = p % per;
    return (KV_QUB * u + r % KV_QUB) * (8 / bits) + r / KV_QUB;
}

/* A code at layout position p is read as code * kv_qplane_scale(b, p)^-1
 * (plane k masked in place, not shifted: code 2^(k b)); the caller folds
 * kv_qplane_scale (2^(-k b), exact) into what multiplies it. */
static inline float kv_qplane_scale(int bits, int p)
{
    int k = bits == 8 ? 0 : (p % (8 * KV_QUB / bits)) / KV_QUB;
    uint32_t x = (uint32_t)(127 - k * bits) << 23;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* sum_p qs[p] (code at layout position p, as above) over the n codes
 * (kv_qfast) of one byte-aligned run, in one fixed order, straight from
 * the packed bytes. */
float kv_qdot_codes(const float *qs, const uint8_t *codes, int bits, int n);

/* S[t] = qz + kv_qdot_codes(qs, codes + t stride, bits, n) for t < nt. */
void kv_qlogits_codes(const float *qs, float qz, const uint8_t *codes, size_t stride, int bits, int n, int nt,
                      float *S);

/* sum a_i b_i over n floats in one fixed order. */
float kv_qdot(const float *a, const float *b, int n);

/* A tile's values, row t of nt: floats (coded = 0: v is nt x dv, channel
 * order), or b-bit codes (coded = 1: token t's dv codes, kv_qfast, at
 * codes + t cstride) with the token's nvg group zero points vz and scales
 * vs (nt x nvg); gp[k] is the value group of layout lanes [8k, 8k + 8)
 * (constant over them: the caller checks) and pl[p] kv_qplane_scale of
 * layout position p. */
typedef struct {
    int dv, nvg, coded, bits;
    const float *v, *vz, *vs;
    const uint8_t *codes;
    size_t cstride;
    const int *gp;
    const float *pl;
} kv_qtile_vals;

/* Fold a tile of nt <= KV_QTILE tokens with (scaled) logits s into the
 * double state r, whose u is in layout order when the values are coded
 * (channel order otherwise): s is overwritten with the weights; U holds dv
 * floats and Z (KV_QTILE + 1) nvg floats of scratch. */
void kv_qfold_tile(double *r, float *s, int nt, const kv_qtile_vals *tv, float *U, float *Z);

/* Merge the state rl, whose u is in layout order (perm[p]: the channel of
 * position p; NULL: channel order already), into st; tmp holds
 * KV_PSTATE_LEN(dv) doubles. */
void kv_qstate_merge(double *st, const double *rl, const int *perm, int dv, double *tmp);

/* Per-thread scratch buffers of floats, grown geometrically. */
typedef struct {
    float **buf;
    size_t *cap;
    int n;
} kv_qscratch;

/* Room for the calling thread (and those of a parallel region it opens):
 * KV_OK or KV_EINTERNAL.  Call outside the parallel region. */
int kv_qscratch_slots(kv_qscratch *w);

/* The calling thread's buffer of at least n floats (NULL: out of memory). */
float *kv_qscratch_get(kv_qscratch *w, size_t n);

/* Bytes held (not counted as the method's state: working memory, like the
 * exact kernels' tiles). */
size_t kv_qscratch_bytes(const kv_qscratch *w);
void kv_qscratch_free(kv_qscratch *w);

#endif
