/* attn_lanes.c - the batched tile fold of the exact kernels (nq >= 4):
 * queries in vector lanes.  Q is transposed once per call (d x nqp, nqp =
 * nq rounded up to 16); a tile's logits take one pass per group of up to 4
 * lane vectors in register blocks of tokens x lane vectors fed by one
 * broadcast key element and W query vectors per dimension, the tile max
 * kept as they are stored; the shifted exp and the tile sums then run
 * across lanes with no horizontal work, and P.V takes 6 (or 4) queries x 64
 * value dimensions per register block, added to the double state from the
 * registers.  Every per-query operation is the same whatever its lane, its
 * block or the batch's size (padding lanes are computed and ignored), so a
 * query's result does not depend on which others share its call.  The
 * serial driver is kernels/attn.c's kv_attn_fold_core. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/kverr.h"
#include "kernels/attn_rows.h"
#include "kernels/attn_vec.h"
#include "kernels/partial.h"

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
        if (T == 6 && nt - t == 4) /* 64 = 10 x 6 + 4: no repeated rows */
            lg_blk(Qt, nqp, j, kr, D, t, nt, D ? D : d, 4, W, sc, S, mt, pfl, npf);
        else
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

/* Batched tiles (queries in lanes, see the top): folds into run (nq states). */
int kv_attn_fold_lanes(const float *Q, int nq, const size_t *len, size_t off, kvsrc src,
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
    int rc = KV_EINTERNAL;
    if (!Qt || !S || !U || !lane) goto out;
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
    rc = KV_OK;
out:
    free(Qt);
    free(S);
    free(U);
    free(lane);
    free(kb);
    free(vb);
    return rc;
}
