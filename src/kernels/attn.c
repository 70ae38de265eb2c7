/* attn.c - exact attention kernels: the tile arithmetic and the serial
 * fold (kv_attn_fold_core); the entry points of attn.h that drive it over
 * slices are in attn_par.c, the row source and prefetch in attn_rows.h.
 *
 * Per tile of TILE tokens: logits for all queries, exp shifted by the
 * running max, and P.V summed in float over the tile only; tile sums go into
 * a double running state (m, l, l2, u) per query, rescaled in double on the
 * rare tiles that raise the max.
 *
 * Batched (nq >= 4): queries sit in vector lanes.  Q is transposed once per
 * call (d x nqp, nqp = nq rounded up to 16), so a logit block is 6 tokens x
 * 64 queries of register accumulators fed by one broadcast key element and
 * four query vectors per dimension (then 8 x 32, 8 x 16 for the last
 * lanes); the max, the shifted exp and the tile sums
 * then run across lanes with no horizontal work, and P.V takes 6 (or 4)
 * queries x 64 value dimensions per register block.  Every per-query operation is the
 * same whatever its lane or the batch's size (padding lanes are computed and
 * ignored), so a query's result does not depend on which others share its
 * call.  A single query (or 2, 3) reads each key row in order into one
 * vector accumulator per token, 16 tokens at a time, and sums the 16 in one
 * transpose-add tree; P.V runs even and odd tokens in separate accumulators
 * (latency), and the rows half a tile ahead are prefetched a few lines per step
 * (the memory stays busy during the arithmetic).  GCC vector extensions give AVX-512 code with
 * -march=native and correct (narrower) code elsewhere; dimensions that are
 * not multiples of 16 take scalar loops.
 *
 * Every path reads rows through a table of row pointers per tile (rowwin),
 * so rows held in pages (kv_attn_fold_pages: tokring, rowpool) take the
 * same tiles as a contiguous block, spanning page boundaries, with the
 * prefetch walking the table; the arithmetic sees values, never addresses.
 *
 * Keys and values held as IEEE half (the _f16 entry points) are converted to
 * float32 exactly, then go through the same float arithmetic: bitwise the
 * results of the float32 entry points on the same values, with half the bytes
 * read.  The few-query path converts them in registers as it reads them
 * (attn_ldh.h; a tile scratch cost an L2 write and read per element, 2x the
 * time); the batched path a tile at a time into a scratch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/kverr.h"
#include "kernels/attn.h"
#include "kernels/attn_ldh.h"
#include "kernels/attn_rows.h"
#include "kernels/lanes16.h"
#include "kernels/partial.h"
#include "kernels/vshuf.h"

#define VL 16    /* floats per vector */

/* Every function taking or returning these vectors is static to this file,
 * so no call crosses an ABI boundary: -Wpsabi's note (clang and GCC, builds
 * without AVX-512) does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef kv_v16 v16;

static inline v16 ld(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v16 bc(float x) { return (v16){ x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x }; }

typedef kv_v16i v16i;
typedef float v8f __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));

/* x > m ? x : m by lane (NaN x: m; the lane max of a pass in order) */
static inline v16 vmax_first(v16 x, v16 m)
{
#if defined(__AVX512F__)
    return (v16)_mm512_max_ps((__m512)x, (__m512)m);
#else
    v16i gt = x > m;
    return (v16)((gt & (v16i)x) | (~gt & (v16i)m));
#endif
}

/* exp(x) for x <= 0, 16 at a time: 2^k * exp(r), r = x - k ln2 in
 * [-ln2/2, ln2/2] (ln2 in two parts, the first exact in a few bits),
 * exp(r) = 1 + r + r^2 p(r) with Cephes' degree-5 minimax p.  Worst
 * relative error over every float in [-87, 0]: 8.4e-8 with FMA, 8.2e-8
 * without (tests/test_expf.c checks 1e-7); x < -87, -inf included, gives 0.
 * Explicit vectors (GCC extensions) so every kernel gets the build's full
 * width and the same arithmetic (kv_expf_neg too). */
static inline v16 expv(v16 x)
{
    const v16 lo = bc(-87.0f);
    v16i under = x < lo; /* all ones where x < -87 */
    v16 v = vmax_first(lo, x); /* x < -87 ? -87 : x */
    /* round to nearest with the 1.5*2^23 trick: plain arithmetic */
    v16 kb = v * bc(1.44269504f) + bc(12582912.0f), k = kb - bc(12582912.0f);
    v16 r = v - k * bc(0.693359375f) + k * bc(2.12194440e-4f);
    v16 p = bc(1.9875691500e-4f);
    p = p * r + bc(1.3981999507e-3f);
    p = p * r + bc(8.3334519073e-3f);
    p = p * r + bc(4.1665795894e-2f);
    p = p * r + bc(1.6666665459e-1f);
    p = p * r + bc(5.0000001201e-1f);
    p = p * (r * r) + r + bc(1.0f);
    /* 2^k, k in [-126, 0] an integer: kb = 1.5 2^23 + k exactly, whose
     * bits are 0x4B400000 + k, so (k + 127) << 23 (a normal) without a
     * conversion */
    v16i ki = ((v16i)kb - (0x4B400000 - 127)) << 23;
    v16 e = p * (v16)ki;
    return (v16)((v16i)e & ~under);
}

void kv_expf_neg(float *x, size_t n)
{
    size_t i = 0;
    for (; i + VL <= n; i += VL) st16(x + i, expv(ld(x + i)));
    if (i < n) { /* the tail through the same vector code */
        float t[VL] = { 0 };
        memcpy(t, x + i, sizeof(float) * (n - i));
        st16(t, expv(ld(t)));
        memcpy(x + i, t, sizeof(float) * (n - i));
    }
}

void kv_attn_exp_tile(double *r, float *s, int nt, float mt, int dv)
{
    float m = kv_partial_raise_max(r, mt, dv);
    for (int t = 0; t < nt; t++) s[t] -= m;
    kv_expf_neg(s, (size_t)nt);
    float l = 0, l2 = 0;
    for (int t = 0; t < nt; t++) {
        l += s[t];
        l2 += s[t] * s[t];
    }
    r[KV_PS_L] += l;
    r[KV_PS_L2] += l2;
}

/* u[c] += x[c] (double += float), c < n: the per-tile fold into the state */
static inline void add_f2d(double *restrict u, const float *restrict x, int n)
{
    int c = 0;
    for (; c + 8 <= n; c += 8) {
        v8f xf;
        v8d ud;
        memcpy(&xf, x + c, sizeof xf);
        memcpy(&ud, u + c, sizeof ud);
        ud += __builtin_convertvector(xf, v8d);
        memcpy(u + c, &ud, sizeof ud);
    }
    for (; c < n; c++) u[c] += x[c];
}

/* ---- logits: S[q*TILE + t] = scale * <Q[q], K[t]> ---- */

static void logits_scalar(const float *restrict Q, int nq, const float *const *kr, int nt, int d, float scale,
                          float *restrict S)
{
    for (int q = 0; q < nq; q++)
        for (int t = 0; t < nt; t++) {
            float a = 0;
#pragma omp simd reduction(+ : a)
            for (int c = 0; c < d; c++) a += Q[(size_t)q * d + c] * kr[t][c];
            S[q * TILE + t] = a * scale;
        }
}

/* The 16 lane sums of each of a[0..15] in one vector (lane j: token j's
 * logit before scaling): a transpose-add tree, lanes i + i^8, then i^4, i^2,
 * i^1 added, so every token's sum takes the same tree whatever its slot.
 * The inputs are taken in the order that leaves the outputs in place. */
static inline v16 hsum16x16(const v16 *a)
{
    static const v16i lo8 = { 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23 };
    static const v16i hi8 = { 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31 };
    static const v16i lo4 = { 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27 };
    static const v16i hi4 = { 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31 };
    static const v16i lo2 = { 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29 };
    static const v16i hi2 = { 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31 };
    static const v16i lo1 = { 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30 };
    static const v16i hi1 = { 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31 };
    v16 b[8], c[4], e[2];
    for (int i = 0; i < 8; i++) b[i] = KV_SHUF2(a[i], a[i + 8], lo8) + KV_SHUF2(a[i], a[i + 8], hi8);
    for (int i = 0; i < 4; i++) c[i] = KV_SHUF2(b[i], b[i + 4], lo4) + KV_SHUF2(b[i], b[i + 4], hi4);
    for (int i = 0; i < 2; i++) e[i] = KV_SHUF2(c[i], c[i + 2], lo2) + KV_SHUF2(c[i], c[i + 2], hi2);
    return KV_SHUF2(e[0], e[1], lo1) + KV_SHUF2(e[0], e[1], hi1);
}

/* a[i] += q[cb ..] k_i[cb ..] by lane over W vectors of dimensions: q's W
 * vectors held in registers and each key row read in order (a sequential
 * stream the hardware prefetchers follow).  W a constant at each call. */
static inline __attribute__((always_inline)) void logits_blk(const float *restrict q, const float *const *k,
                                                             const uint16_t *const *kh, int h, int cb, int W,
                                                             v16 *a, pfrun pk, size_t per, size_t step)
{
    v16 qv[8];
    for (int j = 0; j < W; j++) qv[j] = ld(q + cb + j * VL);
    for (int i = 0; i < 16; i++) {
        if (cb == 0) pf_step(pk, per, step + (size_t)i);
        for (int j = 0; j < W; j++) a[i] += qv[j] * (h ? kv_ldh16(kh[i] + cb + j * VL) : ld(k[i] + cb + j * VL));
    }
}

/* one query, 16 tokens per pass (d % 16 == 0): 16 vector accumulators of
 * <q, k_t> by lane (logits_blk), then hsum16x16 and one store of 16
 * logits.  A short last group repeats its last row, so every token's logit
 * comes from the same instruction sequence whatever its place in the tile
 * (bitwise the same logits however the stream is sharded).  pk: rows to
 * prefetch over this work, a share per key row. */
static inline __attribute__((always_inline)) void logits_one_g(const float *restrict q, const float *const *kr,
                                                               const uint16_t *kh, int h, int nt, int d, float scale,
                                                               float *restrict S, pfrun pk)
{
    size_t per = pf_per(&pk, (size_t)(nt + 15) / 16 * 16);
    for (int t = 0; t < nt; t += 16) {
        const float *k[16];
        const uint16_t *hk[16];
        for (int i = 0; i < 16; i++) {
            int r = t + i < nt ? t + i : nt - 1;
            if (h) hk[i] = kh + (size_t)r * d;
            else k[i] = kr[r];
        }
        v16 a[16];
        for (int i = 0; i < 16; i++) a[i] = bc(0);
        int c = 0;
        for (; c + 8 * VL <= d; c += 8 * VL) logits_blk(q, k, hk, h, c, 8, a, pk, per, (size_t)t);
        for (; c + 4 * VL <= d; c += 4 * VL) logits_blk(q, k, hk, h, c, 4, a, pk, per, (size_t)t);
        for (; c < d; c += VL) logits_blk(q, k, hk, h, c, 1, a, pk, per, (size_t)t);
        v16 s = hsum16x16(a) * bc(scale);
        if (t + 16 <= nt) st16(S + t, s);
        else memcpy(S + t, &s, sizeof(float) * (size_t)(nt - t));
    }
}

/* kh NULL: float rows kr; else half rows from kh (d apart), converted as read */
static void logits_one(const float *restrict q, const float *const *kr, const uint16_t *kh, int nt, int d,
                       float scale, float *restrict S, pfrun pk)
{
    if (kh) logits_one_g(q, kr, kh, 1, nt, d, scale, S, pk);
    else logits_one_g(q, kr, NULL, 0, nt, d, scale, S, pk);
}

/* many queries, in lanes: S[t * nqp + j] = scale * <Q[j], K[t]> for the
 * lanes j in [lb, nqp) (lb, nqp multiples of VL) and t < nt, from Qt (d x
 * nqp, zero padded).  One pass over the tile per group of W <= 4 lane
 * vectors: register blocks of T tokens x W vectors (6 x 4, 8 x 3, 8 x 2,
 * 8 x 1), each dimension c one load per lane vector and one broadcast per
 * token; a short last block repeats its last row.  Each logit is the FMA
 * chain over c in order, then one multiply by scale: the same for every
 * lane and block shape. */

/* line addresses of rows [a, a + T) of run r (capped at its bytes) */
static inline int pf_lines(pfrun r, size_t a, int T, const char **out)
{
    int n = 0;
    for (int i = 0; (r.p || r.rows) && i < T; i++) {
        size_t o = (a + (size_t)i) * r.rowb;
        if (o >= r.bytes) break;
        const char *row = r.p ? r.p + o : (const char *)r.rows[a + (size_t)i];
        for (size_t b = 0; b < r.rowb; b += 64) out[n++] = row + b;
    }
    return n;
}

/* tokens [t, t + T) (clamped to nt) x lane vectors [j, j + W VL); the npf
 * lines pfl prefetched over the c loop (a few per c: spread over the FMAs,
 * a burst stalls on the fill buffers).  D > 0: the rows are D floats apart
 * from kr[0] (one pointer, constant offsets: no spilled row pointers). */
static inline __attribute__((always_inline)) void lg_blk(const float *restrict Qt, size_t nqp, int j,
                                                         const float *const *kr, int D, int t, int nt, int d,
                                                         int T, int W, v16 sc, float *restrict S,
                                                         float *restrict mt, const char *const *pfl, int npf)
{
    const float *k[8];
    int ri[8];
    for (int i = 0; i < T; i++) ri[i] = t + i < nt ? t + i : nt - 1;
    for (int i = 0; i < T; i++) k[i] = kr[ri[i]];
    const float *k0 = kr[0] + (size_t)t * D;
    v16 a[8][4];
    for (int i = 0; i < T; i++)
        for (int v = 0; v < W; v++) a[i][v] = bc(0);
    const float *qr = Qt + j;
    for (int c = 0; c < d; c++, qr += nqp) {
        for (int e = c; e < npf; e += d) __builtin_prefetch(pfl[e], 0, KV_PF_LOCALITY);
        v16 q[4];
        for (int v = 0; v < W; v++) q[v] = ld(qr + v * VL);
        for (int i = 0; i < T; i++) {
            v16 b = bc(D ? k0[(ri[i] - t) * D + c] : k[i][c]);
            for (int v = 0; v < W; v++) a[i][v] += b * q[v];
        }
    }
    /* the stores, and each lane's running max over the tokens in order
     * (the first token's logit, then x > m ? x : m: the result of a pass
     * over S after the fact) into mt */
    v16 m[4];
    for (int v = 0; v < W; v++) m[v] = t ? ld(mt + j + v * VL) : a[0][v] * sc;
    for (int i = 0; i < T && t + i < nt; i++)
        for (int v = 0; v < W; v++) {
            v16 x = a[i][v] * sc;
            m[v] = vmax_first(x, m[v]);
            st16(S + (size_t)(t + i) * nqp + j + v * VL, x);
        }
    for (int v = 0; v < W; v++) st16(mt + j + v * VL, m[v]);
}

/* one pass of T x W blocks over the tile's tokens; pf: this pass
 * prefetches (the runs' rows t .. t + T per block, K then V) */
static inline __attribute__((always_inline)) void lg_pass(const float *restrict Qt, size_t nqp, int j,
                                                          const float *const *kr, int D, int nt, int d, int T, int W,
                                                          v16 sc, float *restrict S, float *restrict mt, int pf,
                                                          pfrun pk, pfrun pv, const char **pfl)
{
    for (int t = 0; t < nt; t += T) {
        int npf = 0;
        if (pf) {
            npf = pf_lines(pk, (size_t)t, T, pfl);
            npf += pf_lines(pv, (size_t)t, T, pfl + npf);
        }
        lg_blk(Qt, nqp, j, kr, D, t, nt, D ? D : d, T, W, sc, S, mt, pfl, npf);
    }
}

/* all lanes from j on, in passes of up to 4 lane vectors (pf: the first
 * prefetches); D as lg_blk */
static inline __attribute__((always_inline)) void lg_lanes(const float *restrict Qt, size_t nqp, int j,
                                                           const float *const *kr, int D, int nt, int d, v16 sc,
                                                           float *restrict S, float *restrict mt, int pf, pfrun pk,
                                                           pfrun pv, const char **pfl)
{
    for (; j < (int)nqp; pf = 0) {
        int w = ((int)nqp - j) / VL;
        if (w >= 4) lg_pass(Qt, nqp, j, kr, D, nt, d, 6, 4, sc, S, mt, pf, pk, pv, pfl);
        else if (w == 3) lg_pass(Qt, nqp, j, kr, D, nt, d, 8, 3, sc, S, mt, pf, pk, pv, pfl);
        else if (w == 2) lg_pass(Qt, nqp, j, kr, D, nt, d, 8, 2, sc, S, mt, pf, pk, pv, pfl);
        else lg_pass(Qt, nqp, j, kr, D, nt, d, 8, 1, sc, S, mt, pf, pk, pv, pfl);
        j += (w > 4 ? 4 : w) * VL;
    }
}

static void logits_lanes(const float *restrict Qt, int nqp, int lb, const float *const *kr, int nt, int d,
                         float scale, float *restrict S, float *restrict mt, pfrun pk, pfrun pv, size_t krow,
                         size_t vrow)
{
    const v16 sc = bc(scale);
    const char *pfl[16 * ((krow > vrow ? krow : vrow) + 63) / 64 + 1];
    int pf = pk.p || pk.rows || pv.p || pv.rows, contig = 1;
    for (int t = 1; t < nt && contig; t++) contig = kr[t] == kr[0] + (size_t)t * d;
    size_t np = (size_t)nqp;
    if (contig && d == 64) lg_lanes(Qt, np, lb, kr, 64, nt, d, sc, S, mt, pf, pk, pv, pfl);
    else if (contig && d == 128) lg_lanes(Qt, np, lb, kr, 128, nt, d, sc, S, mt, pf, pk, pv, pfl);
    else lg_lanes(Qt, np, lb, kr, 0, nt, d, sc, S, mt, pf, pk, pv, pfl);
}

/* ---- P.V: U[q] += sum_t P[q][t] V[t] ---- */

static void pv_scalar(const float *restrict P, int nq, const float *const *vr, int nt, int dv, float *restrict U,
                      size_t ustride)
{
    for (int q = 0; q < nq; q++) {
        float *u = U + q * ustride;
        for (int t = 0; t < nt; t++) {
            float p = P[q * TILE + t];
            const float *v = vr[t];
#pragma omp simd
            for (int c = 0; c < dv; c++) u[c] += p * v[c];
        }
    }
}

/* u[c .. c + W*16) = sum_t p[t] V[t][c ..] over the nt value rows vr: even and odd tokens in two sets of W vector accumulators (twice
 * the independent FMA chains: the sums are latency bound otherwise), added
 * at the end.  W a constant at each call (always inlined). */
#define LDV(t, o) (h ? kv_ldh16(vh + (size_t)(t) * dv + c + (o)) : ld(vr[t] + c + (o)))
static inline __attribute__((always_inline)) void pv_cols(const float *restrict p, const float *const *vr,
                                                          const uint16_t *vh, int h, int dv, int nt,
                                                          int c, int W, float *restrict u, pfrun pc,
                                                          size_t per, size_t step)
{
    v16 a[8], b[8];
    for (int i = 0; i < W; i++) a[i] = b[i] = bc(0);
    int t = 0;
    for (; t + 2 <= nt; t += 2) {
        v16 s0 = bc(p[t]), s1 = bc(p[t + 1]);
        pf_step(pc, per, step++);
        for (int i = 0; i < W; i++) {
            a[i] += s0 * LDV(t, i * VL);
            b[i] += s1 * LDV(t + 1, i * VL);
        }
    }
    if (t < nt) {
        v16 s0 = bc(p[t]);
        for (int i = 0; i < W; i++) a[i] += s0 * LDV(t, i * VL);
    }
    for (int i = 0; i < W; i++) st16(u + c + i * VL, a[i] + b[i]);
}

#if defined(__AVX512F__)
#define PV_W 8 /* vectors per pass: 16 accumulators of 32 registers */
#else
#define PV_W 2 /* narrower ISAs: a v16 is 2 or 4 registers of 16 */
#endif

/* dv % 16 == 0, few queries: U[q] = P[q] . V over the tile, one query at a
 * time, PV_W value vectors per pass (dv = 128: one pass with AVX-512);
 * pc: rows to prefetch over this work */
static inline __attribute__((always_inline)) void pv_vec_g(const float *restrict P, int nq, const float *const *vr,
                                                           const uint16_t *vh, int h, int nt, int dv,
                                                           float *restrict U, size_t ustride, pfrun pc)
{
    size_t pairs = (size_t)(nt / 2 ? nt / 2 : 1);
    size_t passes = (size_t)(dv / (PV_W * VL) + dv % (PV_W * VL) / (4 * VL) + dv % (4 * VL) / VL);
    size_t per = pf_per(&pc, (size_t)nq * passes * pairs), step = 0;
    for (int q = 0; q < nq; q++) {
        const float *p = P + q * TILE;
        float *u = U + q * ustride;
        int c = 0;
        for (; c + PV_W * VL <= dv; c += PV_W * VL, step += pairs)
            pv_cols(p, vr, vh, h, dv, nt, c, PV_W, u, pc, per, step);
        for (; c + 4 * VL <= dv; c += 4 * VL, step += pairs) pv_cols(p, vr, vh, h, dv, nt, c, 4, u, pc, per, step);
        for (; c < dv; c += VL, step += pairs) pv_cols(p, vr, vh, h, dv, nt, c, 1, u, pc, per, step);
    }
}
#undef LDV

/* vh NULL: float rows vr; else half rows from vh (dv apart), converted as read */
static void pv_vec(const float *restrict P, int nq, const float *const *vr, const uint16_t *vh, int nt, int dv,
                   float *restrict U, size_t ustride, pfrun pc)
{
    if (vh) pv_vec_g(P, nq, vr, vh, 1, nt, dv, U, ustride, pc);
    else pv_vec_g(P, nq, vr, NULL, 0, nt, dv, U, ustride, pc);
}

/* u[0 .. 16) += x: each float converted (exactly) and added in double, as
 * add_f2d does */
static inline void add_v16d(double *restrict u, v16 x)
{
    v8f lo = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
    v8f hi = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    v8d a, b;
    memcpy(&a, u, sizeof a);
    memcpy(&b, u + 8, sizeof b);
    a += __builtin_convertvector(lo, v8d);
    b += __builtin_convertvector(hi, v8d);
    memcpy(u, &a, sizeof a);
    memcpy(u + 8, &b, sizeof b);
}

/* queries [j, j + R) x value vectors [c, c + W VL): each sum a sequential
 * FMA chain over t from zero, then added to the query's state u in run
 * (rows sl apart) for the queries in [qa, nq) only (ended or padding lanes
 * are computed and dropped) */
static inline __attribute__((always_inline)) void pv_blk(const float *restrict P, size_t nqp, int j, int R, int W,
                                                         const float *const *vr, int nt, int c, double *run,
                                                         size_t sl, int qa, int nq)
{
    v16 a[6][4];
    for (int i = 0; i < R; i++)
        for (int k = 0; k < W; k++) a[i][k] = bc(0);
    for (int t = 0; t < nt; t++) {
        const float *vt = vr[t] + c, *p = P + (size_t)t * nqp + j;
        v16 v[4];
        for (int k = 0; k < W; k++) v[k] = ld(vt + k * VL);
        for (int i = 0; i < R; i++) {
            v16 s = bc(p[i]);
            for (int k = 0; k < W; k++) a[i][k] += s * v[k];
        }
    }
    for (int i = 0; i < R; i++)
        if (j + i >= qa && j + i < nq)
            for (int k = 0; k < W; k++) add_v16d(run + (size_t)(j + i) * sl + KV_PS_U + c + k * VL, a[i][k]);
}

/* many queries, P in lanes (P[t * nqp + j]), dv % 16 == 0: u[j][c] +=
 * sum_{t < nt} P[t][j] V[t][c] for the queries j in [qa, nq), computed for
 * the lanes [lb, qe) (qe - lb and lb multiples of 4).  Register blocks of 6
 * (then 4) queries x 4 value vectors: 24 FMAs per 4 value loads and 6
 * broadcasts; the value columns outside, so their 16 KiB of the tile stay
 * in L1 across the query blocks. */
static void pv_lanes(const float *restrict P, int nqp, int lb, int qe, const float *const *vr, int nt, int dv,
                     double *run, size_t sl, int qa, int nq)
{
    size_t np = (size_t)nqp;
    int c = 0;
    for (; c + 4 * VL <= dv; c += 4 * VL) {
        /* 6-query blocks in pairs, so that a multiple of 4 queries is left */
        int j = lb, j6 = lb + (qe - lb) / 12 * 12;
        for (; j < j6; j += 6) pv_blk(P, np, j, 6, 4, vr, nt, c, run, sl, qa, nq);
        for (; j < qe; j += 4) pv_blk(P, np, j, 4, 4, vr, nt, c, run, sl, qa, nq);
    }
    for (; c < dv; c += VL)
        for (int j = lb; j < qe; j += 4) pv_blk(P, np, j, 4, 1, vr, nt, c, run, sl, qa, nq);
}

/* the same for dv % 16 != 0, into U (U[j * dv + c], then added by the caller) */
static void pv_lanes_any(const float *restrict P, int nqp, int lb, int qe, const float *const *vr, int nt, int dv,
                         float *restrict U)
{
    for (int j = lb; j < qe; j++) {
        float *u = U + (size_t)j * dv;
        for (int k = 0; k < dv; k++) u[k] = 0.0f;
        for (int t = 0; t < nt; t++) {
            float p = P[(size_t)t * nqp + j];
            const float *v = vr[t];
#pragma omp simd
            for (int k = 0; k < dv; k++) u[k] += p * v[k];
        }
    }
}

/* Prefix length of query q within this call's n tokens at offset off
 * (len NULL: all n). */
static inline size_t qlen(const size_t *len, int q, size_t off, size_t n)
{
    return len ? (len[q] <= off ? 0 : len[q] - off < n ? len[q] - off : n) : n;
}

/* Batched tiles (queries in lanes, see the top): folds into run (nq states). */
static int fold_lanes(const float *Q, int nq, const size_t *len, size_t off, kvsrc src,
                      size_t n, int d, int dv, float scale, double *run)
{
    float *kb, *vb;
    if (tile_bufs(src.esz, TILE, d, dv, &kb, &vb)) return KV_EINTERNAL;
    size_t sl = KV_PSTATE_LEN(dv);
    int nqp = (nq + VL - 1) / VL * VL;
    /* sizes rounded to 64 bytes for aligned_alloc */
#define ALLOC64(cnt) aligned_alloc(64, ((size_t)(cnt) * sizeof(float) + 63) / 64 * 64)
    float *Qt = ALLOC64((size_t)d * nqp), *S = ALLOC64((size_t)TILE * nqp), *U = ALLOC64((size_t)nqp * dv);
    float *lane = ALLOC64(4 * (size_t)nqp); /* per lane: tile max, shift, l, l2 */
#undef ALLOC64
    if (!Qt || !S || !U || !lane) {
        free(Qt);
        free(S);
        free(U);
        free(lane);
        free(kb);
        free(vb);
        return KV_EINTERNAL;
    }
    const size_t krow = (size_t)d * src.esz, vrow = (size_t)dv * src.esz;
    float *mt = lane, *mf = lane + nqp, *lv = lane + 2 * nqp, *l2v = lane + 3 * nqp;
    for (int c = 0; c < d; c++)
        for (int j = 0; j < nqp; j++) Qt[(size_t)c * nqp + j] = j < nq ? Q[(size_t)j * d + c] : 0.0f;
    rowwin w;
    rows_init(&w, src, n, d, dv);
    int qa = 0; /* first query still active */
    for (size_t t0 = 0; t0 < n; t0 += TILE) {
        while (qa < nq && qlen(len, qa, off, n) <= t0) qa++;
        if (qa == nq) break;
        int lb = qa / VL * VL;                       /* lanes below lb: all ended, skipped */
        int qe = nq % 4 ? nq + 4 - nq % 4 : nq;      /* P.V blocks of 4 queries (qe <= nqp) */
        int nt = (int)(n - t0 < TILE ? n - t0 : TILE);
        rows_keys(&w, t0, nt, KV_PF_TOKENS + TILE, kb); /* values converted when used (L1) */
        /* keep the memory system busy: the rows KV_PF_TOKENS on */
        pfrun pk = rows_pf(&w, t0 + KV_PF_TOKENS, KV_PF_TOKENS ? TILE : 0, 0);
        pfrun pv = rows_pf(&w, t0 + KV_PF_TOKENS, KV_PF_TOKENS ? TILE : 0, 1);
        logits_lanes(Qt, nqp, lb, w.k, nt, d, scale, S, mt, pk, pv, krow, vrow);
        /* prefixes ending inside the tile (a run of the first active queries):
         * -inf past the end, so exp gives exact zeros there */
        for (int q = qa; q < nq; q++) {
            size_t lq = qlen(len, q, off, n) - t0;
            if (lq >= (size_t)nt) break;
            for (int t = (int)lq; t < nt; t++) S[(size_t)t * nqp + q] = -INFINITY;
            mt[q] = S[q]; /* the max over the tokens it sees (lq >= 1) */
            for (int t = 1; t < (int)lq; t++) mt[q] = S[(size_t)t * nqp + q] > mt[q] ? S[(size_t)t * nqp + q] : mt[q];
        }
        for (int j = lb; j < nqp; j++)  /* ended or padding lanes: any finite shift */
            mf[j] = j >= qa && j < nq ? kv_partial_raise_max(run + (size_t)j * sl, mt[j], dv) : mt[j];
        for (int j = lb; j < nqp; j += VL) { /* shift, exp and the tile sums in one pass */
            v16 m = ld(mf + j), l = bc(0), l2 = bc(0);
            for (int t = 0; t < nt; t++) {
                float *p = S + (size_t)t * nqp + j;
                v16 e = expv(ld(p) - m);
                st16(p, e);
                l += e;
                l2 += e * e;
            }
            st16(lv + j, l);
            st16(l2v + j, l2);
        }
        rows_vals(&w, t0, nt, vb);
        /* P.V from the block of 4 holding qa: a query's sums are its own FMA
         * chain whatever its block, and ended lanes below it need none */
        if (dv % VL == 0) pv_lanes(S, nqp, qa / 4 * 4, qe, w.v, nt, dv, run, sl, qa, nq);
        else pv_lanes_any(S, nqp, qa / 4 * 4, qe, w.v, nt, dv, U);
        for (int q = qa; q < nq; q++) {
            double *r = run + (size_t)q * sl;
            r[KV_PS_L] += lv[q];
            r[KV_PS_L2] += l2v[q];
            if (dv % VL) add_f2d(r + KV_PS_U, U + (size_t)q * dv, dv);
        }
    }
    free(Qt);
    free(S);
    free(U);
    free(lane);
    free(kb);
    free(vb);
    return KV_OK;
}

/* Few-query tiles (nq < 4, one query at a time): folds into run. */
static int fold_few(const float *Q, int nq, const size_t *len, size_t off, kvsrc src, size_t n,
                    int d, int dv, float scale, double *run)
{
    size_t sl = KV_PSTATE_LEN(dv);
    int dvec = d % VL == 0, vvec = dv % VL == 0;
    float *S = malloc(sizeof(float) * (size_t)nq * TILE);
    float *U = malloc(sizeof(float) * (size_t)nq * dv); /* this tile's P.V, float */
    float *kb = NULL, *vb = NULL;
    int fz = src.esz == 2 && !src.np && dvec && vvec; /* half rows converted in registers (attn_ldh.h) */
    if (!S || !U || tile_bufs(fz ? sizeof(float) : src.esz, KV_TILE_ONE, d, dv, &kb, &vb)) {
        free(S);
        free(U);
        return KV_EINTERNAL;
    }
    const size_t tile = KV_TILE_ONE;
    rowwin w;
    rows_init(&w, src, n, d, dv);
    int qa = 0; /* first query still active */
    for (size_t t0 = 0; t0 < n; t0 += tile) {
        while (qa < nq && qlen(len, qa, off, n) <= t0) qa++;
        if (qa == nq) break;
        int na = nq - qa;
        const float *Qa = Q + (size_t)qa * d;
        int nt = (int)(n - t0 < tile ? n - t0 : tile);
        /* the rows pfd ahead: keys over the logits, values over P.V (half
         * rows: the whole next tile, which is converted at once) */
        size_t pfd = src.esz == sizeof(float) || fz || !KV_PF1_TOKENS ? KV_PF1_TOKENS : tile;
        const uint16_t *kh = fz ? (const uint16_t *)src.K + t0 * d : NULL;
        const uint16_t *vh = fz ? (const uint16_t *)src.V + t0 * dv : NULL;
        if (!fz) rows_keys(&w, t0, nt, pfd + tile, kb); /* values converted when used (L1) */
        pfrun pk = rows_pf(&w, t0 + pfd, pfd ? tile : 0, 0), pv = rows_pf(&w, t0 + pfd, pfd ? tile : 0, 1);
        pfrun none = { NULL, NULL, 0, 0, 0 };
        if (dvec) {
            for (int i = 0; i < na; i++) {
                size_t lq = qlen(len, qa + i, off, n) - t0;
                logits_one(Qa + (size_t)i * d, w.k, kh, lq < (size_t)nt ? (int)lq : nt, d, scale, S + i * TILE,
                           i == 0 ? pk : none);
            }
        } else {
            logits_scalar(Qa, na, w.k, nt, d, scale, S);
        }
        for (int i = 0; i < na; i++) {
            float *s = S + i * TILE;
            double *r = run + (size_t)(qa + i) * sl;
            size_t lq = qlen(len, qa + i, off, n) - t0;
            int ntq = lq < (size_t)nt ? (int)lq : nt; /* >= 1: the query is active */
            float mt = s[0];
#pragma omp simd reduction(max : mt)
            for (int t = 1; t < ntq; t++) mt = s[t] > mt ? s[t] : mt;
            float m = kv_partial_raise_max(r, mt, dv);
#pragma omp simd
            for (int t = 0; t < ntq; t++) s[t] -= m;
            kv_expf_neg(s, (size_t)ntq);
            for (int t = ntq; t < TILE; t++) s[t] = 0.0f; /* masked tail: adds exact zeros below */
            float l = 0, l2 = 0;
#pragma omp simd reduction(+ : l, l2)
            for (int t = 0; t < ntq; t++) { l += s[t]; l2 += s[t] * s[t]; }
            r[KV_PS_L] += l;
            r[KV_PS_L2] += l2;
        }
        if (!fz) rows_vals(&w, t0, nt, vb);
        if (vvec) {
            pv_vec(S, na, w.v, vh, nt, dv, U, (size_t)dv, pv);
        } else {
            memset(U, 0, sizeof(float) * (size_t)na * dv);
            pv_scalar(S, na, w.v, nt, dv, U, (size_t)dv);
        }
        for (int i = 0; i < na; i++) add_f2d(run + (size_t)(qa + i) * sl + KV_PS_U, U + (size_t)i * dv, dv);
    }
    free(S);
    free(U);
    free(kb);
    free(vb);
    return KV_OK;
}

/* attn_rows.h says what it does */
int kv_attn_fold_core(const float *Q, int nq, const size_t *len, size_t off, kvsrc src,
                      size_t n, int d, int dv, float scale, double *st, int batched)
{
    if (n == 0 || nq == 0) return KV_OK;
    size_t sl = KV_PSTATE_LEN(dv);
    double *run = malloc(sizeof(double) * (size_t)nq * sl); /* running state, double */
    if (!run) return KV_EINTERNAL;
    for (int q = 0; q < nq; q++) kv_partial_clear(run + (size_t)q * sl, dv);
    int rc = batched ? fold_lanes(Q, nq, len, off, src, n, d, dv, scale, run)
                     : fold_few(Q, nq, len, off, src, n, d, dv, scale, run);
    if (rc == KV_OK)
        for (int q = 0; q < nq; q++) kv_partial_merge(st + (size_t)q * sl, run + (size_t)q * sl, dv);
    free(run);
    return rc;
}
