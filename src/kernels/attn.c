/* attn.c - exact attention kernels: the tile arithmetic and the serial
 * fold (kv_attn_fold_core); the entry points of attn.h that drive it over
 * slices are in attn_par.c, the row source and prefetch in attn_rows.h.
 *
 * Per tile of TILE tokens: logits for all queries, exp shifted by the
 * running max, and P.V summed in float over the tile only; tile sums go into
 * a double running state (m, l, l2, u) per query, rescaled in double on the
 * rare tiles that raise the max.
 *
 * Batched (nq >= 4): queries sit in vector lanes (kernels/attn_lanes.c).
 * Every per-query operation is the same whatever its lane or the batch's
 * size, so a query's result does not depend on which others share its
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
#include "kernels/attn_vec.h"
#include "kernels/lanes16.h"
#include "kernels/partial.h"
#include "kernels/vshuf.h"

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
    int rc = batched ? kv_attn_fold_lanes(Q, nq, len, off, src, n, d, dv, scale, run)
                     : fold_few(Q, nq, len, off, src, n, d, dv, scale, run);
    if (rc == KV_OK)
        for (int q = 0; q < nq; q++) kv_partial_merge(st + (size_t)q * sl, run + (size_t)q * sl, dv);
    free(run);
    return rc;
}
