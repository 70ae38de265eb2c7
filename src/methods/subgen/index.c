/* index.c - SubGen's nearest-centre search (subgen.c has the overview):
 * the centres in transposed blocks of CB with |c|^2, a float scan with an
 * error bound confirmed by an exact double distance, the 16-dim projection
 * index that skips most scans without changing a choice, and opening a
 * cluster (growing every per-cluster array).  The kernels are
 * kernels/lanes16.h. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "methods/subgen/state.h"

/* every per-cluster array at capacity nc; on failure nothing is lost */
static int realloc_clusters(subgen *g, int64_t nc, kv_err *err)
{
    int64_t d = g->ctx.d;
    float *c = realloc(g->cent, sizeof(float) * (size_t)(nc * d));
    if (c) g->cent = c;
    float *n = realloc(g->cnorm, sizeof(float) * (size_t)nc);
    if (n) g->cnorm = n;
    cluster *l = realloc(g->cl, sizeof(cluster) * (size_t)nc);
    if (l) g->cl = l;
    float *ds = realloc(g->dist, sizeof(float) * (size_t)nc);
    if (ds) g->dist = ds;
    float *pr = realloc(g->pre, sizeof(float) * GK * (size_t)nc);
    if (pr) g->pre = pr;
    int ok = c && n && l && ds && pr;
    if (ok && g->use_index) {
        float *cp = realloc(g->cproj, sizeof(float) * (size_t)(nc * NP));
        if (cp) g->cproj = cp;
        double *nn = realloc(g->nnd, sizeof(double) * (size_t)nc);
        if (nn) g->nnd = nn;
        ok = cp && nn;
    }
    if (!ok) return kv_seterr(err, KV_EINTERNAL, "subgen: out of memory for %lld clusters", (long long)nc);
    g->ccap = g->pre_cap = nc;
    g->layout++;
    return KV_OK;
}

/* room for one more cluster in every per-cluster array (nc < cap) */
static int grow_clusters(subgen *g, kv_err *err)
{
    if (g->nc < g->ccap) return KV_OK;
    int64_t nc = sg_ccap_for(g, g->nc + 1);
    if (nc <= g->nc) return kv_seterr(err, KV_EINTERNAL, "subgen: cluster cap %lld exceeded", (long long)g->cap);
    return realloc_clusters(g, nc, err);
}

/* exact squared distance from k to centre j */
double sg_dist2_centre(const subgen *g, const float *k, int64_t j)
{
    return kv_dist2_f64_strided(k, cblock(g, j) + j % CB, CB, g->ctx.d); /* coordinate i at [i * CB] */
}

/* dist[q][j] = fast squared distance from key q to centre j, for the
 * centres of blocks [b0, b1) */
static void scan_blocks(const subgen *g, const float *const *k, const float *kn, int nk, int64_t b0, int64_t b1,
                        float *const *dist)
{
    int d = g->ctx.d;
    float r[GK][CB];
    float *rp[GK] = { r[0], r[1], r[2], r[3] };
    for (int64_t b = b0; b < b1; b++) {
        const float *blk = g->cent + (size_t)b * CB * d;
        if (nk == GK) kv_dot_blocks(blk, k, GK, d, rp); /* two specialised copies */
        else
            for (int q = 0; q < nk; q++) kv_dot_blocks(blk, k + q, 1, d, rp + q);
        const float *cn = g->cnorm + b * CB;
        for (int q = 0; q < nk; q++) {
            float *out = dist[q] + b * CB;
#pragma omp simd
            for (int l = 0; l < CB; l++) out[l] = kn[q] - 2.0f * r[q][l] + cn[l];
        }
    }
}

/* scan_blocks over blocks [b0, nblocks), in parallel when it is long */
void sg_scan_from(const subgen *g, const float *const *k, const float *kn, int nk, int64_t b0,
                      float *const *dist)
{
    int64_t nb = (g->nc + CB - 1) / CB, per = CHUNK / CB;
    if (b0 >= nb) return;
    int64_t nch = (nb - b0 + per - 1) / per;
    /* a parallel region per token only pays off when the scan is long; each
     * centre is computed by the same code whatever the thread count */
    int par = (nb - b0) * CB * g->ctx.d * nk >= PAR_WORK && !omp_in_parallel() && omp_get_max_threads() > 1;
    if (!par) { /* not even an if(0) region: entering one costs libgomp calls per token */
        scan_blocks(g, k, kn, nk, b0, nb, dist);
        return;
    }
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < nch; c++) {
        int64_t a = b0 + c * per, e = a + per < nb ? a + per : nb;
        scan_blocks(g, k, kn, nk, a, e, dist);
    }
}

void sg_project(const subgen *g, const float *k, float *pk)
{
    int d = g->ctx.d;
    const float *P = g->proj;
    for (int p = 0; p < NP; p += 4)
        kv_dot16x4(k, P + (size_t)p * d, P + (size_t)(p + 1) * d, P + (size_t)(p + 2) * d, P + (size_t)(p + 3) * d, d,
             pk + p);
}

/* Accept c0 without a scan if it is provably the scan's choice (see top). */
static int index_accepts(const subgen *g, const float *k, double knorm, int64_t c0)
{
    double r2 = sg_dist2_centre(g, k, c0);
    if (!(r2 <= g->delta2)) return 0;
    double gap = sqrt(2.0 * fast_err(g->ctx.d, knorm, g->cmax)) * 1.01 + 1e-30;
    return 2.0 * sqrt(r2) * (1.0 + 1e-9) + gap < g->nnd[c0];
}

/* nearest centre in the projection (first index among equals).  Lane l
 * keeps the best block for centres l (mod CB); lanes are compared at the
 * end.  Padding lanes hold +inf and never win. */
static int64_t index_guess(const subgen *g, const float *pk)
{
    int64_t nb = (g->nc + CB - 1) / CB;
    kv_v16 best, r, x;
    kv_v16i bblk = { 0 };
    for (int l = 0; l < CB; l++) best[l] = INFINITY;
    for (int64_t b = 0; b < nb; b++) {
        const float *c = g->cproj + (size_t)b * CB * NP;
        kv_v16 a0 = { 0 }, a1 = { 0 };
        for (int p = 0; p < NP; p += 2) { /* two chains: blocks overlap in flight */
            memcpy(&r, c + p * CB, sizeof r);
            x = pk[p] - r;
            a0 += x * x;
            memcpy(&r, c + (p + 1) * CB, sizeof r);
            x = pk[p + 1] - r;
            a1 += x * x;
        }
        a0 += a1;
        kv_v16i m = a0 < best; /* -1 where strictly better */
        best = (kv_v16)(((kv_v16i)a0 & m) | ((kv_v16i)best & ~m));
        bblk = (((kv_v16i){ 0 } + (int32_t)b) & m) | (bblk & ~m);
    }
    int64_t arg = -1;
    float bv = INFINITY;
    for (int l = 0; l < CB; l++) {
        int64_t j = (int64_t)bblk[l] * CB + l;
        if (best[l] < bv || (best[l] == bv && arg >= 0 && j < arg)) {
            bv = best[l];
            arg = j;
        }
    }
    return arg;
}

/* Cluster of key k, or -1 for "open a new one" (then g->dist holds the scan
 * against all existing centres).  pre, if not NULL, holds the distances to
 * the first pre_nc centres, computed ahead in a batch. */
int64_t sg_find_cluster(subgen *g, const float *k, float kn, const float *pk, const float *pre, int64_t pre_nc)
{
    int d = g->ctx.d;
    double knorm = sqrt(kn > 0 ? (double)kn : 0.0);
    if (g->nc == 0) return -1;
    if (g->use_index && g->nc >= IDX_MIN) {
        if (g->last >= 0 && index_accepts(g, k, knorm, g->last)) return g->last;
        int64_t c0 = index_guess(g, pk);
        if (c0 >= 0 && c0 != g->last && index_accepts(g, k, knorm, c0)) return c0;
    }
    float *dist[1] = { g->dist };
    int64_t b0 = 0;
    if (pre) { /* only the blocks with centres opened since remain */
        memcpy(g->dist, pre, sizeof(float) * (size_t)pre_nc);
        b0 = pre_nc / CB;
    }
    g->scanned = 1;
    sg_scan_from(g, &k, &kn, 1, b0, dist);
    int64_t best = kv_argmin_first(g->dist, g->nc);
    if (best < 0) return -1;
    double cn = sqrt(g->cnorm[best] > 0 ? (double)g->cnorm[best] : 0.0);
    if ((double)g->dist[best] > g->delta2 + fast_err(d, knorm, cn)) return -1;
    return sg_dist2_centre(g, k, best) <= g->delta2 ? best : -1;
}

/* Open a cluster with centre k; g->dist holds the scan of k against the
 * existing centres, which is exactly what the index bounds need. */
int sg_open_cluster(subgen *g, const float *k, float kn, const float *pk, kv_err *err)
{
    int d = g->ctx.d;
    if (grow_clusters(g, err)) return err->code;
    int64_t c = g->nc;
    if (c % CB == 0) { /* a fresh block: padding lanes defined (zero) */
        memset(cblock(g, c), 0, sizeof(float) * CB * (size_t)d);
        memset(g->cnorm + c, 0, sizeof(float) * CB);
        if (g->use_index)
            for (int i = 0; i < CB * NP; i++) g->cproj[c * NP + i] = INFINITY;
    }
    float *cb = cblock(g, c) + c % CB;
    for (int i = 0; i < d; i++) cb[(size_t)i * CB] = k[i];
    g->cnorm[c] = kn;
    kv_reservoir_init(&g->cl[c].r, g->t);
    g->cl[c].cap = 0;
    g->cl[c].keys = g->cl[c].vals = NULL;
    double knorm = sqrt(kn > 0 ? (double)kn : 0.0);
    if (g->use_index) {
        float *cp = g->cproj + (c / CB) * CB * NP + c % CB;
        for (int p = 0; p < NP; p++) cp[p * CB] = pk[p];
        double nn = INFINITY, *nnd = g->nnd;
        const float *dist = g->dist, *cnorm = g->cnorm;
#pragma omp simd reduction(min : nn)
        for (int64_t j = 0; j < c; j++) { /* branch-free: vectorised */
            double cj = sqrt(cnorm[j] > 0 ? (double)cnorm[j] : 0.0);
            double lb = (double)dist[j] - fast_err(d, knorm, cj);
            lb = lb > 0 ? sqrt(lb) : 0.0;
            nn = lb < nn ? lb : nn;
            nnd[j] = lb < nnd[j] ? lb : nnd[j];
        }
        g->nnd[c] = nn;
    }
    if (knorm > g->cmax) g->cmax = knorm;
    g->nc++;
    return KV_OK;
}
