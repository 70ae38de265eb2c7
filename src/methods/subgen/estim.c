/* estim.c - SubGen's estimates (subgen.c has the overview): per query one
 * partial state (m, l, 0, u) with a common max m over every logit used.
 * The denominator l comes from the cluster reservoirs; the numerator u from
 * the same samples with their values (estimator=joint), or the exact buffer
 * while it lives, or the l2 samples (the paper's estimator).  Queries are
 * answered CB at a time, one per SIMD lane: a query's state is bitwise the
 * same alone or in any batch. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "methods/subgen/state.h"

/* Raw logits <q, k> of up to CB queries, one per lane: the queries are
 * transposed into QT (d rows of CB floats) and kv_dot_blocks gives the CB
 * logits of a key with one SIMD multiply-add per coordinate, GK keys per
 * pass over QT.  S gets nall rows of CB: reservoir keys cluster by cluster,
 * then the numerator keys. */
static void block_logits(const subgen *g, const float *Q, int nq, float *QT, float *S, int64_t nall)
{
    int d = g->ctx.d;
    memset(QT, 0, sizeof(float) * CB * (size_t)d);
    for (int q = 0; q < nq; q++)
        for (int i = 0; i < d; i++) QT[(size_t)i * CB + q] = Q[(size_t)q * d + i];
    const float *kp[GK];
    float *op[GK];
    int nk = 0;
    int64_t row = 0;
    for (int64_t c = 0; c <= g->nc; c++) {
        /* c == nc: the numerator keys */
        const float *keys = c < g->nc ? g->cl[c].keys : g->buf_on ? g->bk : g->sk;
        int64_t ns = c < g->nc ? kv_reservoir_size(&g->cl[c].r) : nall - g->nres;
        for (int64_t j = 0; j < ns; j++, row++) {
            kp[nk] = keys + j * d;
            op[nk++] = S + row * CB;
            if (nk == GK) {
                kv_dot_blocks(QT, kp, GK, d, op);
                nk = 0;
            }
        }
    }
    for (int q = 0; q < nk; q++) kv_dot_blocks(QT, kp + q, 1, d, op + q);
}

/* Row weights of the numerator fold */
typedef struct {
    double *e;        /* the row's factor e^{a - m} (times its weight) */
    const float **v;  /* its value row */
} numrows;

typedef kv_dot_v8d v8d;
#if defined(__AVX512F__)
#define FW 8 /* v8d accumulators per column block: 8 of 32 registers */
#else
#define FW 4
#endif

/* u[c .. c + 8W) = sum_r e[r] v_r[c ..], rows in order, the sums in
 * registers: per column the same multiply-adds in the same order as one
 * column at a time.  W a constant at each call. */
static inline __attribute__((always_inline)) void fold_cols(const numrows *nr, int64_t n, int c, int W, double *u)
{
    v8d a[FW];
    for (int i = 0; i < W; i++) a[i] = (v8d){ 0 };
    for (int64_t r = 0; r < n; r++) {
        for (int i = 0; i < W; i++) {
            v8d y = kv_ld8d(nr->v[r] + c + 8 * i);
            kv_madd_d8(&a[i], nr->e[r], &y);
        }
    }
    memcpy(u + c, a, sizeof(v8d) * (size_t)W);
}

/* u of lane q (S: shifted exponentials, ls floats a row (CB lanes, or 1
 * for one query), rows from `row` on are the numerator's).  joint: the
 * denominator's samples with their values,
 * sum_c (n_c / |sample_c|) sum_{(k,v) in sample_c} e^{a - m} v; else the
 * exact buffer, or (1/s) sum_j e^{a_j - m} v_j F / |v_j|^2.  Each u[c] is
 * the sum over the rows in order, from 0 (fused as `u[c] += e * v[c]` was:
 * kv_madd_d).  nr: scratch for nall rows. */
static void numerator(const subgen *g, const float *S, size_t ls, int q, int64_t row, int64_t nall, numrows *nr,
                      double *u)
{
    int dv = g->ctx.dv;
    int64_t n = 0;
    if (g->joint) {
        int64_t rr = 0;
        for (int64_t c = 0; c < g->nc; c++) {
            int64_t ns = kv_reservoir_size(&g->cl[c].r);
            double w = (double)g->cl[c].r.n / (double)ns;
            for (int64_t j = 0; j < ns; j++, rr++, n++) {
                nr->e[n] = w * S[(size_t)rr * ls + (size_t)q];
                nr->v[n] = g->cl[c].vals + j * dv;
            }
        }
    }
    for (int64_t j = 0; row + j < nall; j++, n++) {
        double e = S[(size_t)(row + j) * ls + (size_t)q];
        if (g->buf_on) {
            nr->v[n] = g->bv + j * dv;
        } else {
            e *= g->l2.F / ((double)g->s * g->l2.w[j]);
            nr->v[n] = g->sv + j * dv;
        }
        nr->e[n] = e;
    }
    int c = 0;
    for (; c + 8 * FW <= dv; c += 8 * FW) fold_cols(nr, n, c, FW, u);
    for (; c + 8 <= dv; c += 8) fold_cols(nr, n, c, 1, u);
    for (; c < dv; c++) {
        double x = 0;
        for (int64_t r = 0; r < n; r++) x = kv_madd_d(nr->e[r], nr->v[r][c], x);
        u[c] = x;
    }
}

/* The states of up to CB queries (block_logits; lanes never mix). */
static void block_states(const subgen *g, const float *Q, int nq, float *QT, float *S, int64_t nall, numrows *nr,
                         double *st)
{
    size_t sl = KV_PSTATE_LEN(g->ctx.dv);
    block_logits(g, Q, nq, QT, S, nall);

    /* scale, one max per lane over every logit, exp */
    kv_v16 m, r, sc = (kv_v16){ 0 } + (float)g->ctx.scale;
    for (int l = 0; l < CB; l++) m[l] = -INFINITY;
    for (int64_t i = 0; i < nall; i++) {
        memcpy(&r, S + i * CB, sizeof r);
        r *= sc;
        memcpy(S + i * CB, &r, sizeof r);
        m = (kv_v16)(((kv_v16i)r & (r > m)) | ((kv_v16i)m & ~(r > m)));
    }
    for (int64_t i = 0; i < nall; i++) {
        memcpy(&r, S + i * CB, sizeof r);
        r -= m;
        memcpy(S + i * CB, &r, sizeof r);
    }
    kv_expf_neg(S, (size_t)nall * CB);

    /* denominator: sum_c (n_c / |sample_c|) sum_{k in sample_c} e^{a - m} */
    double l[CB] = { 0 };
    int64_t row = 0;
    for (int64_t c = 0; c < g->nc; c++) {
        int64_t ns = kv_reservoir_size(&g->cl[c].r);
        double e[CB] = { 0 }, w = (double)g->cl[c].r.n / (double)ns;
        for (int64_t j = 0; j < ns; j++, row++)
            for (int q = 0; q < CB; q++) e[q] += S[row * CB + q];
        for (int q = 0; q < CB; q++) l[q] += w * e[q];
    }
    for (int q = 0; q < nq; q++) {
        double *o = st + (size_t)q * sl;
        numerator(g, S, CB, q, row, nall, nr, o + KV_PS_U);
        o[KV_PS_M] = m[q];
        o[KV_PS_L] = l[q];
        o[KV_PS_L2] = 0.0;
    }
}

/* One query's state, bitwise block_states' lane for it, without the 15
 * idle lanes: its logits 16 keys at a time (kv_dot_keys4: each the lane's
 * chains in order), then per row the lane's scale, max, shift, exp and
 * sums.  S: nall floats. */
static void dense_state(const subgen *g, const float *q, float *S, int64_t nall, numrows *nr, double *o)
{
    int d = g->ctx.d;
    const float *kp[KV_L16];
    int nk = 0;
    int64_t row = 0, at = 0;
    for (int64_t c = 0; c <= g->nc; c++) { /* as block_logits: reservoirs, then the numerator keys */
        const float *keys = c < g->nc ? g->cl[c].keys : g->buf_on ? g->bk : g->sk;
        int64_t ns = c < g->nc ? kv_reservoir_size(&g->cl[c].r) : nall - g->nres;
        for (int64_t j = 0; j < ns; j++, row++) {
            kp[nk++] = keys + j * d;
            if (nk == KV_L16) {
                kv_dot_keys4(q, kp, nk, d, S + at);
                at += nk;
                nk = 0;
            }
        }
    }
    if (nk) kv_dot_keys4(q, kp, nk, d, S + at);
    /* the lane's scale and max; the max's value is the same in any order,
     * but of two zeros a lane keeps the first: then the row order decides */
    float sc = (float)g->ctx.scale, m = -INFINITY;
    kv_v16 r, mv = (kv_v16){ 0 } - INFINITY;
    int64_t i0 = 0;
    for (; i0 + KV_L16 <= nall; i0 += KV_L16) {
        memcpy(&r, S + i0, sizeof r);
        r *= sc;
        memcpy(S + i0, &r, sizeof r);
        mv = (kv_v16)(((kv_v16i)r & (r > mv)) | ((kv_v16i)mv & ~(r > mv)));
    }
    for (int l = 0; l < KV_L16; l++) m = mv[l] > m ? mv[l] : m;
    for (; i0 < nall; i0++) {
        S[i0] *= sc;
        m = S[i0] > m ? S[i0] : m;
    }
    if (m == 0) {
        m = -INFINITY;
        for (int64_t i = 0; i < nall; i++) m = S[i] > m ? S[i] : m;
    }
    for (int64_t i = 0; i < nall; i++) S[i] -= m;
    kv_expf_neg(S, (size_t)nall);
    double l = 0;
    row = 0;
    for (int64_t c = 0; c < g->nc; c++) {
        int64_t ns = kv_reservoir_size(&g->cl[c].r);
        double e = 0, w = (double)g->cl[c].r.n / (double)ns;
        for (int64_t j = 0; j < ns; j++, row++) e += S[row];
        l += w * e;
    }
    numerator(g, S, 1, 0, row, nall, nr, o + KV_PS_U);
    o[KV_PS_M] = m;
    o[KV_PS_L] = l;
    o[KV_PS_L2] = 0.0;
}

#define DENSE_MAX 3 /* a lane block of at most this many queries goes one query at a time */

/* What one answer reads (method.h: cost): every reservoir key (joint: and
 * its value), the nnum numerator rows' keys and values (and the l2
 * weights), and each cluster's count; a logit (2 d flops) per row and a
 * value fold (2 dv) per numerator row. */
static void count_reads(subgen *g, int nq, int64_t nall, int64_t nnum)
{
    double d = g->ctx.d, dv = g->ctx.dv, res = (double)g->nres, num = (double)nnum;
    double bytes = 4.0 * (res * (g->joint ? d + dv : d) + num * (d + dv)) + 8.0 * (double)g->nc;
    if (!g->buf_on) bytes += 8.0 * num; /* the samples' weights */
    double flops = 2.0 * d * (double)nall + 2.0 * dv * (num + (g->joint ? res : 0.0));
    if (nq > 0) kv_cost_add(&g->cost, nq, bytes, (double)nall, flops);
}

int sg_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    (void)p; /* the driver calls us exactly when we hold the tokens < p */
    subgen *g = state;
    int d = g->ctx.d, dv = g->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv);
    int64_t nnum = g->buf_on ? g->nbuf : (g->l2.F > 0.0 ? g->s : 0);
    int64_t nall = g->nres + nnum;
    if (g->nres == 0) { /* nothing ingested */
        for (int q = 0; q < nq; q++) kv_partial_clear(st + (size_t)q * sl, dv);
        return KV_OK;
    }
    count_reads(g, nq, nall, nnum);
    int nb = (nq + CB - 1) / CB, bad = 0;
    /* query blocks are independent: the same result for any thread count */
#pragma omp parallel if (nb > 1 && !omp_in_parallel()) reduction(| : bad)
    {
        /* one query at a time needs a row of logits, not CB lanes of them */
        size_t lanes = nq <= DENSE_MAX ? 1 : CB;
        float *S = malloc(sizeof(float) * lanes * (size_t)nall), *QT = malloc(sizeof(float) * CB * (size_t)d);
        numrows nr = { malloc(sizeof(double) * (size_t)nall), malloc(sizeof(float *) * (size_t)nall) };
        bad = !S || !QT || !nr.e || !nr.v;
#pragma omp for schedule(dynamic, 1)
        for (int b = 0; b < nb; b++) {
            if (bad) continue; /* this thread has no scratch; the call fails */
            int q0 = b * CB, n = nq - q0 < CB ? nq - q0 : CB;
            if (n <= DENSE_MAX)
                for (int q = q0; q < q0 + n; q++) dense_state(g, Q + (size_t)q * d, S, nall, &nr, st + (size_t)q * sl);
            else
                block_states(g, Q + (size_t)q0 * d, n, QT, S, nall, &nr, st + (size_t)q0 * sl);
        }
        free(S);
        free(QT);
        free(nr.e);
        free(nr.v);
    }
    return bad ? KV_EINTERNAL : KV_OK;
}
