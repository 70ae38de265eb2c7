/* simhash_amx.c - SimHash codes on AMX tiles, each bit kv_dot_fixed's
 * sign (simhash_amx.h).
 *
 * Pieces: every float x is split as x = xh + xl + ex, xh = bf16(x), xl =
 * bf16(x - xh) (x - xh is exact in float), |ex| <= 2^-16 |x|, |xh|, and
 * |xl| <= 2^-8 (1 + 2^-8) |x| (bf16 keeps 8 significant bits, rounding to
 * nearest even).  The tiles sum, over the d elements, the three products
 * xh hh + xl hh + xh hl of a vector x and a plane h in float (each product
 * of two bf16 is exact in float): the vector's row is [xh | xl | xh] and
 * the plane's column [hh | hh | hl], each piece d padded to 32.
 *
 * Bound, S = sum_i |h_i x_i| <= |h|_2 |x|_2 (Cauchy-Schwarz):
 *   - the pieces left out, hh ex + hl xl + hl ex + eh x, per element
 *     <= |h_i x_i| 2^-16 (1.004 + 1.008 + 0.004 + 1) <= 3.1 2^-16 |h_i x_i|;
 *   - the tiles' float sum of the 3 dp products (dp = d padded to 32), in
 *     whatever order, <= gamma(3 dp) times their absolute sum (<= 1.02 S);
 *   - kv_dot_fixed's own rounding: each product through at most d / 8 + 3
 *     roundings (its 8 lane chains and tree), <= gamma(d + 3) S;
 *   - the tiles treat bf16 subnormal inputs as 0 and flush subnormal
 *     results: at most 3 dp 2^-126 (max|x_i|, |h_i| + 2) in all, < 2^-64
 *     for the |x|_2 <= 2^40, |h_i| <= 2^20 this kernel takes.
 * with gamma(n) = n u / (1 - n u), u = 2^-24.  So |approx - kv_dot_fixed| <=
 * c |h| |x| + 2^-64, c = 3.1 2^-16 + 1.02 gamma(3 dp) + gamma(d + 3)
 * (8.0e-5 at d = 64), and a bit whose |approx| exceeds twice that (the
 * bound's own float rounding is far inside the factor 2) has the sign of
 * kv_dot_fixed's dot; the rest, and every bit of a vector with |x|_2
 * outside [2^-40, 2^40] or not finite, are kv_dot_fixed's dot itself.
 *
 * Tiles: 2 x 16 vectors (A, rows) against 2 x 16 planes (B, bf16 pairs
 * interleaved as the instruction takes them): four 16 x 16 float sums, a
 * k step of 32 bf16 per instruction.  The planes' pieces are laid out once
 * per call (about 0.6 MB at L K = 1536, d = 64). */
#include "kernels/simhash_amx.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512F__) && defined(__linux__)
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "kernels/dot.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define GV 32 /* vectors per group: two A tiles */
#define KSTEP 32 /* bf16 per tile row: one instruction's k */

static int amx_state; /* 0: not asked yet, 1: granted, -1: refused */

static int amx_ready(void)
{
    int st = __atomic_load_n(&amx_state, __ATOMIC_ACQUIRE);
    if (!st) {
        st = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
        __atomic_store_n(&amx_state, st, __ATOMIC_RELEASE);
    }
    return st > 0;
}

typedef struct __attribute__((packed)) {
    uint8_t palette, start_row, rsv[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

/* bf16 bits of a finite float, rounded to nearest even */
static inline uint16_t bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float unbf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

static double gam(double n) { return n * 0x1p-24 / (1.0 - n * 0x1p-24); }

/* The planes' pieces: tile (b, ks) of plane block b (16 planes), k step
 * ks, at B + (b nks + ks) 512 (k = seg dp + c: piece seg of element c);
 * each plane row-major in Hr (for the dots recomputed) and its 2-norm,
 * rounded up, in hn.  Returns 0 when an element exceeds 2^20 (not this
 * kernel's). */
static int lay_planes(const float *P, size_t nblk, int d, int dp, int nks, uint16_t *B, float *Hr, float *hn)
{
    memset(B, 0, nblk * (size_t)nks * 1024);
    for (size_t b = 0; b < nblk; b++) {
        double ss[16] = { 0 };
        uint16_t *bb = B + b * (size_t)nks * 512;
        for (int c = 0; c < d; c++)
            for (int n = 0; n < 16; n++) {
                float h = P[(b * (size_t)d + (size_t)c) * 16 + (size_t)n];
                if (!(fabsf(h) <= 0x1p20f)) return 0;
                uint16_t hh = bf16(h), hl = bf16(h - unbf16(hh)), v[3] = { hh, hh, hl };
                for (int seg = 0; seg < 3; seg++) {
                    int k = seg * dp + c;
                    bb[((size_t)(k / KSTEP) * 16 + (size_t)(k % KSTEP) / 2) * 32 + (size_t)n * 2 + (size_t)(k % 2)] = v[seg];
                }
                Hr[(b * 16 + (size_t)n) * (size_t)d + (size_t)c] = h;
                ss[n] += (double)h * h;
            }
        for (int n = 0; n < 16; n++) hn[b * 16 + (size_t)n] = (float)(sqrt(ss[n]) * (1 + 0x1p-20));
    }
    return 1;
}

/* GV vectors' rows [xh | xl | xh] into A (row stride 3 dp); cx[t] = the
 * bound's factor c |x_t| (float, rounded up), or -1 when x_t must go exact */
static void lay_vectors(const float *X, int d, int dp, double c, uint16_t *A, float *cx)
{
    for (int t = 0; t < GV; t++) {
        const float *x = X + (size_t)t * d;
        uint16_t *a = A + (size_t)t * 3 * dp;
        double ss[8] = { 0 }; /* 8 sums: no chain of d dependent adds */
        memset(a, 0, sizeof(uint16_t) * 3 * (size_t)dp);
        for (int i = 0; i < d; i++) ss[i % 8] += (double)x[i] * x[i];
        double xn = sqrt(((ss[0] + ss[1]) + (ss[2] + ss[3])) + ((ss[4] + ss[5]) + (ss[6] + ss[7])));
        cx[t] = xn >= 0x1p-40 && xn <= 0x1p40 ? (float)(c * xn * (1 + 0x1p-20)) : -1.0f; /* NaN and inf: not <= */
        if (cx[t] < 0) continue;
        for (int i = 0; i < d; i++) {
            uint16_t h = bf16(x[i]);
            a[i] = a[2 * dp + i] = h;
            a[dp + i] = bf16(x[i] - unbf16(h));
        }
    }
}

/* the sign bits of 16 planes of block b for vector x: v their approximate
 * dots, cx the vector's bound factor, hn the planes' norms; planes outside
 * `live` (the padding past L K) are left 0, never recomputed */
static uint64_t block_bits(const float *v, float cx, const float *hn, const float *Hr, int d, size_t b, const float *x,
                           uint32_t live)
{
    __m512 a = _mm512_loadu_ps(v), bd = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(cx), _mm512_loadu_ps(hn)),
                                                       _mm512_set1_ps(0x1p-64f));
    __mmask16 pos = _mm512_cmp_ps_mask(a, bd, _CMP_GT_OQ);
    __mmask16 neg = _mm512_cmp_ps_mask(a, _mm512_sub_ps(_mm512_setzero_ps(), bd), _CMP_LT_OQ);
    uint32_t bits = cx < 0 ? 0u : pos & live, unsure = (cx < 0 ? 0xffffu : (uint32_t)(~(pos | neg) & 0xffffu)) & live;
    for (; unsure; unsure &= unsure - 1) {
        int n = __builtin_ctz(unsure);
        if (kv_dot_fixed(Hr + (b * 16 + (size_t)n) * (size_t)d, x, d) >= 0.0f) bits |= 1u << n;
    }
    return bits;
}

/* one group: its sign bits into w (nw words a vector) */
static void group_bits(const uint16_t *B, const float *hn, const float *Hr, size_t np, size_t nblk, int d, int dp,
                       int nks, const uint16_t *A, const float *cx, const float *X, uint64_t *w, size_t nw, float *C)
{
    size_t as = sizeof(uint16_t) * 3 * (size_t)dp;
    memset(w, 0, sizeof(uint64_t) * nw * GV);
    for (size_t b = 0; b < nblk; b += 2) {
        const uint16_t *b0 = B + b * (size_t)nks * 512, *b1 = b0 + (size_t)nks * 512;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int ks = 0; ks < nks; ks++) {
            _tile_loadd(4, A + (size_t)ks * KSTEP, as);
            _tile_loadd(5, A + 16 * 3 * (size_t)dp + (size_t)ks * KSTEP, as);
            _tile_loadd(6, b0 + (size_t)ks * 512, 64);
            _tile_loadd(7, b1 + (size_t)ks * 512, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        _tile_stored(0, C, 64);
        _tile_stored(1, C + 256, 64);
        _tile_stored(2, C + 512, 64);
        _tile_stored(3, C + 768, 64);
        for (int t = 0; t < GV; t++)
            for (size_t e = 0; e < 2; e++) {
                const float *v = C + ((size_t)(t / 16) * 2 + e) * 256 + (size_t)(t % 16) * 16;
                size_t bb = b + e;
                size_t nl = np > bb * 16 ? np - bb * 16 : 0;
                uint32_t live = nl >= 16 ? 0xffffu : (1u << nl) - 1;
                uint64_t m = block_bits(v, cx[t], hn + bb * 16, Hr, d, bb, X + (size_t)t * d, live);
                w[(size_t)t * nw + bb / 4] |= m << (16 * (bb % 4));
            }
    }
}

size_t kv_simhash_amx_codes(const float *P, int L, int K, int d, const float *X, size_t nt, uint32_t *codes, size_t ts,
                            size_t ls)
{
    size_t np = (size_t)L * K, nblk = (np + 31) / 32 * 2, nw = nblk / 4 + 1, m = nt / GV * GV;
    int dp = (d + KSTEP - 1) / KSTEP * KSTEP, nks = 3 * dp / KSTEP;
    if (m == 0 || !amx_ready()) return 0;
    double c = 2.0 * (3.1 * 0x1p-16 + 1.02 * gam(3.0 * dp) + gam(d + 3.0));
    uint16_t *B = aligned_alloc(64, nblk * (size_t)nks * 1024), *A = aligned_alloc(64, sizeof(uint16_t) * GV * 3 * (size_t)dp);
    float *hn = malloc(sizeof(float) * nblk * 16), *C = aligned_alloc(64, sizeof(float) * 1024);
    float *Hr = malloc(sizeof(float) * nblk * 16 * (size_t)d);
    uint64_t *w = malloc(sizeof(uint64_t) * nw * GV), mask = (UINT64_C(1) << K) - 1;
    float cx[GV];
    size_t done = (size_t)-1;
    if (!B || !A || !hn || !C || !Hr || !w) goto out;
    done = 0; /* P's padding to 64 planes covers the pairs of blocks */
    if (!lay_planes(P, nblk, d, dp, nks, B, Hr, hn)) goto out;
    tilecfg cfg = { .palette = 1 };
    for (int i = 0; i < 8; i++) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 16;
    }
    _tile_loadconfig(&cfg);
    for (size_t t0 = 0; t0 < m; t0 += GV) {
        lay_vectors(X + t0 * (size_t)d, d, dp, c, A, cx);
        group_bits(B, hn, Hr, np, nblk, d, dp, nks, A, cx, X + t0 * (size_t)d, w, nw, C);
        for (size_t l = 0; l < (size_t)L; l++) /* table by table: a run of GV codes when written table-major */
            for (size_t t = 0; t < GV; t++) {
                size_t pos = l * (size_t)K, i = pos / 64, sh = pos % 64;
                const uint64_t *wt = w + t * nw;
                uint64_t v = wt[i] >> sh;
                if (sh && sh + (size_t)K > 64) v |= wt[i + 1] << (64 - sh);
                codes[(t0 + t) * ts + l * ls] = (uint32_t)(v & mask);
            }
    }
    _tile_release();
    done = m;
out:
    free(B);
    free(A);
    free(hn);
    free(C);
    free(Hr);
    free(w);
    return done;
}

#else
size_t kv_simhash_amx_codes(const float *P, int L, int K, int d, const float *X, size_t nt, uint32_t *codes, size_t ts,
                            size_t ls)
{
    (void)P, (void)L, (void)K, (void)d, (void)X, (void)nt, (void)codes, (void)ts, (void)ls;
    return 0;
}
#endif
