/* subgen.c - SubGen (Zandieh, Han, Mirrokni, Karbasi 2024), a
 * sublinear-memory streaming estimate of softmax attention (ALGORITHMS.md
 * section 2).  Spec: subgen[:delta=<radius>,t=<keys per cluster>,s=<samplers>
 * ,seed=<n>,index=0|1,clusters=<cap>|budget=<X>,estimator=paper|joint], each optional
 * (defaults: kv_subgen_params below).
 *
 * Two structures, both updated once per arriving token (k, v):
 *  1. Online clustering of keys for the denominator.  k joins the nearest
 *     centre within Euclidean distance delta (<= delta, ties to the lowest
 *     index), else opens a cluster whose centre is k.  Each cluster keeps its
 *     count n_c and a uniform reservoir of at most t of its keys.
 *         sum_i e^{a_i} ~ sum_c (n_c / |sample_c|) sum_{k in sample_c} e^{a(k)}
 *  2. s independent l2 samplers of (k, v) pairs, pair i drawn with
 *     probability |v_i|^2 / F, F = sum |v_i|^2 (src/methods/sampler.h), for the
 *     numerator:
 *         sum_i e^{a_i} v_i ~ (1/s) sum_j e^{a(k_j)} v_j F / |v_j|^2.
 *     While at most s tokens with v != 0 have arrived we also hold them all
 *     (the "exact buffer") and answer the numerator exactly from it; the
 *     buffer is dropped for good when the (s+1)-th arrives.  So delta = 0,
 *     t >= n, s >= n on distinct keys reproduces exact attention.
 * estimator=joint (joint=1; our estimator, not the paper's): the reservoirs store each
 * sampled key's value too, there are no l2 samples and no exact buffer, and
 * numerator and denominator come from the same stratified sample:
 *     l = sum_c (n_c / |R_c|) sum_{k in R_c} e^{a(k)}
 *     u = sum_c (n_c / |R_c|) sum_{(k,v) in R_c} e^{a(k)} v
 * (the stratified ratio estimator).  The l2 samples are query-blind: when
 * most attention falls on a few clusters they spend their budget on tokens
 * the query ignores, while a cluster's own samples are where the mass is.
 * delta = 0, t >= n (distinct keys or not) is exact.  The theorem below
 * covers joint=0 only.
 * Guarantee (their theorem): if the keys are (m, delta)-clusterable, r bounds
 * scale*|q|, t = O(eps^-2 e^{2 delta r} log n) and s = O(eps^-2 d), then
 * |z - z*| <= eps |softmax(a)|_2 |V|_op with high probability, in memory
 * O(d (m t + s)): sublinear when m = o(n).
 *
 * Per query, partial() returns ONE weighted partial state (m, l, 0, u) with a
 * common max m over every logit used; the cross-rank merge sums l and u, so
 * the sum of the ranks' estimates is the estimate of the whole stream.
 *
 * Ranks.  t, s and clusters are totals over ranks: rank r runs its own
 * sketch of its shard with t_r, s_r, cap_r = kv_rank_share (ceil(x shard_r /
 * n), at least 1; x / P when the shard is unknown), so the sums exceed the
 * totals by at most P from rounding.  What distribution costs: centres are
 * per rank, and under chunk-cyclic sharding every rank sees every natural
 * cluster, so P ranks hold up to P copies of a centre and its neighbourhood:
 * at a fixed cap (or budget) the distinct clusters held shrink to about cap
 * / P, each centre's slot (d floats and the index entry) is paid P times,
 * and each copy's reservoir is only t_r ~ t / P keys.  The l2 samples split
 * without loss (s_r samplers per shard draw the same total); every rank also
 * pays the fixed part (struct, the 16 x d index projection).  bytes() counts
 * all of it.
 *
 * Cluster cap (rank r: cap_r).  When a key matches no centre within delta
 * and the rank holds cap_r clusters, delta doubles and clusters merge (the
 * doubling rule of online k-centre, Charikar, Chekuri, Feder, Motwani 1997):
 * centres in index order each join the nearest earlier kept centre within
 * the new delta, else are kept; counts add and reservoirs merge exactly by
 * weighted sampling without replacement (merge_reservoirs).  Repeated until
 * the key joins a centre or a slot is free; each further round takes delta
 * to at least the least distance among the kept centres and the key, so it
 * makes progress.  A round costs O(cap_r^2 d / 16) vector operations
 * (float distances with an error bound, exact double distances only where
 * the bound cannot decide: the decisions of an exact scan, identical for
 * index=0/1), and delta only grows, so there are O(log(diameter / delta))
 * rounds over the whole stream; other tokens cost O(cap_r d) as before.
 * Kept centres stay first keys, so the index's bound (nnd, recomputed from
 * the merge's lower bounds) stays valid.  Without clusters= or budget= the
 * cap is also at most what fits in half of exact's memory for the shard
 * (default_cap_half), so no delta and no data can make the clusters hold
 * more than that.
 *
 * budget=X (core/budget.h, not with s= or clusters=; t= allowed): rank r
 * gets B_r = floor(B shard_r / n) of B = kv_budget_bytes (B / P if the shard
 * is unknown), so the shares sum to <= B at any rank count.  After the fixed
 * part, half goes to l2 samples at sample_bytes each (key + value, the
 * exact buffer's row that lives on top of them until the (s+1)-th valued
 * token, sampler bookkeeping) and half to clusters at slot_bytes per
 * allocated slot (slots come in blocks of 16) plus t_r reservoir keys each;
 * s_r and cap_r are what fits (budget_rule).  joint=1: all of it goes to
 * clusters, t_r reservoir keys and values each, t_r = floor(sqrt(R / 2))
 * of the R rows that fit unless t= is given (so the cap is about 2 t_r).  All capacities are clamped to
 * them, so bytes() <= B_r at every step.
 *
 * Finding the nearest centre: centres are stored in transposed blocks of 16
 * with |c|^2, and a scan computes |k|^2 - 2<k,c> + |c|^2 in float, 16 centres
 * per SIMD multiply-add, in an order that is fixed per (key, centre) (so
 * results never depend on alignment, batching or thread count).  When most
 * tokens need a scan, 4 upcoming keys are scanned in one pass over the
 * centres (multiply-add bound instead of L2 bound); the scan runs in OpenMP
 * chunks when it is long and we are not already in a parallel region (the
 * replay driver may ingest different streams from parallel threads).  The
 * candidate is confirmed by an exact double distance.
 * With index=1 (default) most scans are skipped: a guess c0 (the previous
 * token's cluster, else the nearest centre in a 16-dim random projection) is
 * accepted when 2|k - c0| plus a rounding margin is below a lower bound of
 * the distance from c0 to its nearest other centre; by the triangle inequality
 * every other centre is then farther by more than the scan's rounding error,
 * so the scan would have chosen c0 too: the result is bitwise the same as
 * with index=0, only faster on well separated clusters.
 *
 * Queries are answered 16 at a time, one per SIMD lane (partial() gives the
 * same bits for a query alone or in any batch).
 *
 * Memory (bytes()): everything allocated, at capacity: per cluster slot
 * (ccap, 64 doubled up to the cap rounded to 16) the centre, |c|^2, the
 * cluster record, the scan distance and scan-ahead rows, the index entry
 * (16 projected floats, nnd); the reservoir keys held (allocated exactly);
 * the s l2 samples (d + dv floats each, allocated at create) with the sampler
 * bookkeeping and offer scratch; the exact buffer's allocated rows (64
 * doubled, at most s) while it lives; the fixed struct and 16 x d
 * projection.  max_bytes() is that sum when every token of the shard opens
 * its own cluster (up to the cap) and the exact buffer is full while the
 * samples are held: reached exactly on distinct keys with delta = 0, s >= n.
 *
 * Checkpoints (save/load, see subgen_save): the state that decides later
 * results is saved and checked on load; the block layout, the projected
 * centres and the derived maxima are rebuilt bit for bit, so a resumed run
 * is bitwise the same as an uninterrupted one. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "methods/method.h"
#include "kernels/partial.h"
#include "core/rng.h"
#include "methods/sampler.h"
#include "methods/subgen.h"

#define LN 16           /* SIMD lanes of the fixed-order dot product */
#define NP 16           /* dimensions of the index projection */
#define CB 16           /* centres per transposed block */
#define CHUNK 64        /* centres per OpenMP work item (a multiple of CB) */
#define PAR_WORK 262144 /* nc * d above which the scan goes parallel */
#define IDX_MIN 16      /* clusters from which the index is tried */
#define GK 4            /* keys scanned together in one pass over the centres */

typedef struct {
    kv_reservoir r; /* r.n = n_c */
    int64_t cap;    /* key rows allocated */
    float *keys;    /* kv_reservoir_size(&r) rows of d floats */
    float *vals;    /* joint=1: the same rows' values (dv floats each); else NULL */
} cluster;

typedef struct {
    kv_method_ctx ctx;
    double delta, delta2;   /* join distance now (doubled at the cap), squared */
    double delta0;          /* the spec's delta */
    int64_t t;              /* this rank's reservoir size */
    int s, use_index;       /* this rank's l2 samples (0 with joint) */
    int joint;              /* reservoirs carry values; no l2 samples, no exact buffer */
    int64_t cap;            /* this rank's cluster cap */
    int64_t doublings;      /* times the cap doubled delta */
    kv_rng rng;
    /* clustering */
    int64_t nc, ccap, nres; /* clusters, allocated, reservoir keys held */
    int64_t layout;         /* bumped when centres move or arrays grow (scan-ahead rows go stale) */
    float *cent;            /* centres in blocks of CB: see cblock() */
    float *cnorm;           /* |c|^2 */
    cluster *cl;
    double cmax;            /* max |c| */
    float *dist;            /* scratch: fast squared distances of one scan */
    float *pre;             /* scratch: GK rows of distances computed ahead */
    int64_t pre_cap;        /* floats per pre row */
    unsigned hist;          /* bit per recent token: it needed a scan */
    int scanned;            /* the current token needed a scan */
    /* index (use_index) */
    float *proj;            /* NP x d Gaussian projection */
    float *cproj;           /* projected centres, blocks of CB like cent */
    double *nnd;            /* lower bound of |c - c'| over other centres c' */
    int64_t last;           /* cluster of the previous token */
    /* l2 sampling */
    kv_l2_sampler l2;
    float *sk, *sv;         /* s x d sampled keys, s x dv sampled values */
    int *take;              /* scratch for kv_l2_offer */
    /* exact buffer for the numerator */
    int buf_on;
    int64_t nval, nbuf, bcap; /* tokens with v != 0, rows held, allocated */
    float *bk, *bv;
    kv_query_cost cost;     /* method.h: cost */
} subgen;

/* ---- fixed-order dot products ------------------------------------------ */

/* Lane l accumulates elements i = l (mod LN); lanes are then added in a fixed
 * tree.  The result never depends on pointer alignment, thread count or on
 * which of dot1/dot4 computed it. */
static inline float hsum(float *acc)
{
    /* constant trip counts: unrolled into a few vector adds */
    for (int l = 0; l < 8; l++) acc[l] += acc[l + 8];
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    for (int l = 0; l < 2; l++) acc[l] += acc[l + 2];
    return acc[0] + acc[1];
}

static inline float dot1(const float *restrict a, const float *restrict b, int d)
{
    float acc[LN] = { 0 };
    int i = 0;
    for (; i + LN <= d; i += LN) {
#pragma omp simd
        for (int l = 0; l < LN; l++) acc[l] += a[i + l] * b[i + l];
    }
    for (int l = 0; i + l < d; l++) acc[l] += a[i + l] * b[i + l];
    return hsum(acc);
}

/* out[j] = <a, b_j> for four vectors b_j: a is loaded once for all four */
static inline void dot4(const float *restrict a, const float *restrict b0, const float *restrict b1,
                        const float *restrict b2, const float *restrict b3, int d, float *out)
{
    float c0[LN] = { 0 }, c1[LN] = { 0 }, c2[LN] = { 0 }, c3[LN] = { 0 };
    int i = 0;
    for (; i + LN <= d; i += LN) {
#pragma omp simd
        for (int l = 0; l < LN; l++) {
            float x = a[i + l];
            c0[l] += x * b0[i + l];
            c1[l] += x * b1[i + l];
            c2[l] += x * b2[i + l];
            c3[l] += x * b3[i + l];
        }
    }
    for (int l = 0; i + l < d; l++) {
        float x = a[i + l];
        c0[l] += x * b0[i + l];
        c1[l] += x * b1[i + l];
        c2[l] += x * b2[i + l];
        c3[l] += x * b3[i + l];
    }
    out[0] = hsum(c0);
    out[1] = hsum(c1);
    out[2] = hsum(c2);
    out[3] = hsum(c3);
}

/* |v|^2 in double (8 fixed lanes: vectorised, order fixed) */
static double norm2_exact(const float *v, int d)
{
    double acc[8] = { 0 };
    int i = 0;
    for (; i + 8 <= d; i += 8) {
#pragma omp simd
        for (int l = 0; l < 8; l++) acc[l] += (double)v[i + l] * v[i + l];
    }
    for (int l = 0; i + l < d; l++) acc[l] += (double)v[i + l] * v[i + l];
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

/* Bound on the rounding error of a float |a|^2 - 2<a,b> + |b|^2 (generous:
 * several times the worst case of the lane sums). */
static double fast_err(int d, double na, double nb)
{
    return 2.0 * (d + 4) * FLT_EPSILON * (na + nb) * (na + nb);
}

/* ---- growth ------------------------------------------------------------ */

/* Capacities are a function of what is held (64 doubled, clamped), so that a
 * checkpoint restores the same bytes() and max_bytes() can name the worst. */
static int64_t cap_for(int64_t need, int64_t clamp)
{
    int64_t c = 64;
    if (need >= clamp) return clamp; /* also: no overflow on a malformed checkpoint's need */
    while (c < need) c *= 2;
    return c < clamp ? c : clamp;
}

/* per-cluster arrays are allocated for whole blocks of CB, up to the cap */
static int64_t ccap_for(const subgen *g, int64_t need)
{
    return cap_for(need, (g->cap + CB - 1) / CB * CB);
}

/* the exact buffer never holds more than s rows */
static int64_t bcap_for(const subgen *g, int64_t need) { return cap_for(need, g->s); }

/* Bytes of one allocated cluster slot besides its keys: centre, |c|^2,
 * cluster record, scan distance, GK scan-ahead rows, index (projected
 * centre, nnd).  The unit of the cluster part of the budget rule. */
static int64_t slot_bytes(int d, int use_index)
{
    int64_t f = (int64_t)sizeof(float);
    return (int64_t)d * f + f + (int64_t)sizeof(cluster) + f + GK * f +
           (use_index ? NP * f + (int64_t)sizeof(double) : 0);
}

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
    int64_t nc = ccap_for(g, g->nc + 1);
    if (nc <= g->nc) return kv_seterr(err, KV_EINTERNAL, "subgen: cluster cap %lld exceeded", (long long)g->cap);
    return realloc_clusters(g, nc, err);
}

/* ---- nearest centre ---------------------------------------------------- */

/* Centres are stored in blocks of CB: coordinate i of centres 16b .. 16b+15
 * is one row of CB floats, so a scan broadcasts k[i] and updates CB
 * distances with one SIMD multiply-add (no horizontal sums).  Lanes past nc
 * in the last block hold zeros and are ignored. */
static inline float *cblock(const subgen *g, int64_t j)
{
    return g->cent + (size_t)(j / CB) * CB * (size_t)g->ctx.d;
}

typedef float vecf __attribute__((vector_size(CB * sizeof(float)))); /* GNU C */
typedef int32_t veci __attribute__((vector_size(CB * sizeof(int32_t))));

/* out[q][l] = <k_q, centre l of the block> for nk <= GK keys.  Each (key,
 * centre) value is computed by the same operations whatever nk is (four
 * chains over i mod 4, then a fixed sum), so batching never changes a
 * result.  A block row is loaded once for all nk keys: with several keys the
 * scan is bound by multiply-adds instead of by L2 bandwidth.  Vector types
 * because GCC spilled plain accumulator arrays to the stack. */
static inline __attribute__((always_inline)) void dot_blocks(const float *restrict blk, const float *const *k,
                                                             int nk, int d, float *const *out)
{
    vecf a[GK][4], r;
    for (int q = 0; q < nk; q++)
        for (int c = 0; c < 4; c++) a[q][c] = (vecf){ 0 };
    int i = 0;
    for (; i + 4 <= d; i += 4)
        for (int c = 0; c < 4; c++) {
            memcpy(&r, blk + (size_t)(i + c) * CB, sizeof r); /* unaligned load */
            for (int q = 0; q < nk; q++) a[q][c] += k[q][i + c] * r;
        }
    for (; i < d; i++) {
        memcpy(&r, blk + (size_t)i * CB, sizeof r);
        for (int q = 0; q < nk; q++) a[q][0] += k[q][i] * r;
    }
    for (int q = 0; q < nk; q++) {
        r = (a[q][0] + a[q][1]) + (a[q][2] + a[q][3]);
        memcpy(out[q], &r, sizeof r);
    }
}

/* exact squared distance from k to centre j */
static double dist2_centre(const subgen *g, const float *k, int64_t j)
{
    int d = g->ctx.d;
    const float *c = cblock(g, j) + j % CB; /* coordinate i at c[i * CB] */
    double acc[8] = { 0 };
    int i = 0;
    for (; i + 8 <= d; i += 8)
        for (int l = 0; l < 8; l++) {
            double x = (double)k[i + l] - (double)c[(size_t)(i + l) * CB];
            acc[l] += x * x;
        }
    for (int l = 0; i + l < d; l++) {
        double x = (double)k[i + l] - (double)c[(size_t)(i + l) * CB];
        acc[l] += x * x;
    }
    for (int l = 0; l < 4; l++) acc[l] += acc[l + 4];
    return (acc[0] + acc[2]) + (acc[1] + acc[3]);
}

/* first index of the smallest value (NaN never wins); -1 if none is finite */
static int64_t argmin(const float *x, int64_t n)
{
    float mn = INFINITY;
#pragma omp simd reduction(min : mn)
    for (int64_t j = 0; j < n; j++) mn = x[j] < mn ? x[j] : mn;
    if (!(mn < INFINITY)) return -1;
    for (int64_t j = 0; j < n; j++)
        if (x[j] == mn) return j;
    return -1;
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
        if (nk == GK) dot_blocks(blk, k, GK, d, rp); /* two specialised copies */
        else
            for (int q = 0; q < nk; q++) dot_blocks(blk, k + q, 1, d, rp + q);
        const float *cn = g->cnorm + b * CB;
        for (int q = 0; q < nk; q++) {
            float *out = dist[q] + b * CB;
#pragma omp simd
            for (int l = 0; l < CB; l++) out[l] = kn[q] - 2.0f * r[q][l] + cn[l];
        }
    }
}

/* scan_blocks over blocks [b0, nblocks), in parallel when it is long */
static void scan_from(const subgen *g, const float *const *k, const float *kn, int nk, int64_t b0,
                      float *const *dist)
{
    int64_t nb = (g->nc + CB - 1) / CB, per = CHUNK / CB;
    if (b0 >= nb) return;
    int64_t nch = (nb - b0 + per - 1) / per;
    /* a parallel region per token only pays off when the scan is long; each
     * centre is computed by the same code whatever the thread count */
    int par = (nb - b0) * CB * g->ctx.d * nk >= PAR_WORK && !omp_in_parallel() && omp_get_max_threads() > 1;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t c = 0; c < nch; c++) {
        int64_t a = b0 + c * per, e = a + per < nb ? a + per : nb;
        scan_blocks(g, k, kn, nk, a, e, dist);
    }
}

static void project(const subgen *g, const float *k, float *pk)
{
    int d = g->ctx.d;
    const float *P = g->proj;
    for (int p = 0; p < NP; p += 4)
        dot4(k, P + (size_t)p * d, P + (size_t)(p + 1) * d, P + (size_t)(p + 2) * d, P + (size_t)(p + 3) * d, d,
             pk + p);
}

/* Accept c0 without a scan if it is provably the scan's choice (see top). */
static int index_accepts(const subgen *g, const float *k, double knorm, int64_t c0)
{
    double r2 = dist2_centre(g, k, c0);
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
    vecf best, r, x;
    veci bblk = { 0 };
    for (int l = 0; l < CB; l++) best[l] = INFINITY;
    for (int64_t b = 0; b < nb; b++) {
        const float *c = g->cproj + (size_t)b * CB * NP;
        vecf a0 = { 0 }, a1 = { 0 };
        for (int p = 0; p < NP; p += 2) { /* two chains: blocks overlap in flight */
            memcpy(&r, c + p * CB, sizeof r);
            x = pk[p] - r;
            a0 += x * x;
            memcpy(&r, c + (p + 1) * CB, sizeof r);
            x = pk[p + 1] - r;
            a1 += x * x;
        }
        a0 += a1;
        veci m = a0 < best; /* -1 where strictly better */
        best = (vecf)(((veci)a0 & m) | ((veci)best & ~m));
        bblk = (((veci){ 0 } + (int32_t)b) & m) | (bblk & ~m);
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
static int64_t find_cluster(subgen *g, const float *k, float kn, const float *pk, const float *pre, int64_t pre_nc)
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
    scan_from(g, &k, &kn, 1, b0, dist);
    int64_t best = argmin(g->dist, g->nc);
    if (best < 0) return -1;
    double cn = sqrt(g->cnorm[best] > 0 ? (double)g->cnorm[best] : 0.0);
    if ((double)g->dist[best] > g->delta2 + fast_err(d, knorm, cn)) return -1;
    return dist2_centre(g, k, best) <= g->delta2 ? best : -1;
}

/* Open a cluster with centre k; g->dist holds the scan of k against the
 * existing centres, which is exactly what the index bounds need. */
static int open_cluster(subgen *g, const float *k, float kn, const float *pk, kv_err *err)
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

/* ---- the cluster cap: doubling delta (online k-centre) -------------------- */

/* centre j as a row of d floats */
static void centre_row(const subgen *g, int64_t j, float *row)
{
    const float *c = cblock(g, j) + j % CB;
    for (int i = 0; i < g->ctx.d; i++) row[i] = c[(size_t)i * CB];
}

static double dist2_rows(const float *a, const float *b, int d)
{
    double s = 0;
    for (int i = 0; i < d; i++) {
        double x = (double)a[i] - (double)b[i];
        s += x * x;
    }
    return s;
}

/* Cluster b joins cluster a: counts add, and a's reservoir becomes a uniform
 * sample of min(n_a + n_b, t) keys of the union, drawn without replacement
 * from the n_a + n_b members (the next comes from a with probability
 * (n_a - taken from a) / (members left)), each draw a uniform key not yet
 * taken of that side's reservoir.  A side's reservoir is a uniform sample of
 * its members, and a side never gives more than min(n, t) keys, so the
 * result is exactly what Algorithm R over the union would hold. */
static int merge_reservoirs(subgen *g, int64_t a, int64_t b, kv_err *err)
{
    cluster *A = &g->cl[a], *B = &g->cl[b];
    int d = g->ctx.d, dv = g->ctx.dv;
    int64_t na = A->r.n, nb = B->r.n, sa = kv_reservoir_size(&A->r), sb = kv_reservoir_size(&B->r);
    int64_t m = na + nb < g->t ? na + nb : g->t, ia = 0, ib = 0;
    float *keys = malloc(sizeof(float) * (size_t)(m * d));
    float *vals = g->joint ? malloc(sizeof(float) * (size_t)(m * dv)) : NULL;
    if (!keys || (g->joint && !vals)) {
        free(keys);
        free(vals);
        return kv_seterr(err, KV_EINTERNAL, "subgen: out of memory merging clusters");
    }
    for (int64_t i = 0; i < m; i++) {
        int from_a = kv_rng_below(&g->rng, (uint64_t)(na + nb - ia - ib)) < (uint64_t)(na - ia);
        cluster *S = from_a ? A : B;
        int64_t *taken = from_a ? &ia : &ib, left = (from_a ? sa : sb) - *taken;
        int64_t j = *taken + (int64_t)kv_rng_below(&g->rng, (uint64_t)left);
        float *x = S->keys + *taken * d, *y = S->keys + j * d, tmp;
        for (int c = 0; c < d; c++) { /* partial Fisher-Yates: taken keys first */
            tmp = x[c];
            x[c] = y[c];
            y[c] = tmp;
        }
        memcpy(keys + i * d, x, sizeof(float) * (size_t)d);
        if (vals) { /* the value moves with its key */
            float *xv = S->vals + *taken * dv, *yv = S->vals + j * dv;
            for (int c = 0; c < dv; c++) {
                tmp = xv[c];
                xv[c] = yv[c];
                yv[c] = tmp;
            }
            memcpy(vals + i * dv, xv, sizeof(float) * (size_t)dv);
        }
        (*taken)++;
    }
    g->nres += m - sa - sb;
    free(A->keys);
    free(B->keys);
    free(A->vals);
    free(B->vals);
    A->keys = keys;
    A->vals = vals;
    A->cap = m;
    A->r.n = na + nb;
    B->keys = B->vals = NULL;
    B->cap = 0;
    return KV_OK;
}

/* Merge at radius D: centres in index order; each joins the nearest earlier
 * kept centre within D (ties to the lowest), else is kept.  Kept centres are
 * then more than D apart, and every member is within delta + D of its
 * centre (Charikar et al.'s invariant).  The nc x kept distances come from
 * float dot products over the kept centres in CB-wide blocks (vectorised,
 * like the scan), each with the error bound fast_err; only the kept centres
 * whose bound could make them the nearest within D get an exact double
 * distance, and the decision is taken on those: exactly the decision of an
 * all-pairs double scan (the exact nearest always passes the bound test),
 * in O(nc kept d / CB) vector operations instead of O(nc kept d) scalar
 * ones.  The same for index=0 and 1.  Rebuilds nnd from the bounds' lower
 * ends (valid lower bounds of the distances) and the block layout; *dmin =
 * the least such lower bound between kept centres. */
static int merge_at(subgen *g, double D, double *dmin, kv_err *err)
{
    int d = g->ctx.d;
    int64_t nc = g->nc, nk = 0, nb = (nc + CB - 1) / CB;
    double D2 = D * D, dmin2 = INFINITY;
    float *rows = malloc(sizeof(float) * (size_t)(nc * d));
    float *kb = calloc((size_t)(nb * CB) * (size_t)d, sizeof(float)); /* kept centres, transposed blocks */
    float *dots = malloc(sizeof(float) * (size_t)(nb * CB));
    int64_t *keep = malloc(sizeof(int64_t) * (size_t)nc), *to = malloc(sizeof(int64_t) * (size_t)nc);
    double *n2 = malloc(sizeof(double) * (size_t)nc), *nr = malloc(sizeof(double) * (size_t)nc);
    double *kn2 = malloc(sizeof(double) * (size_t)nc), *knr = malloc(sizeof(double) * (size_t)nc);
    double *lo = malloc(sizeof(double) * (size_t)nc), *nn = malloc(sizeof(double) * (size_t)nc);
    int rc = KV_OK;
    *dmin = INFINITY;
    if (!rows || !kb || !dots || !keep || !to || !n2 || !nr || !kn2 || !knr || !lo || !nn) {
        rc = kv_seterr(err, KV_EINTERNAL, "subgen: out of memory merging clusters");
        goto out;
    }
    for (int64_t c = 0; c < nc; c++) {
        centre_row(g, c, rows + c * d);
        n2[c] = norm2_exact(rows + c * d, d);
        nr[c] = sqrt(n2[c]);
    }
    for (int64_t c = 0; c < nc; c++) {
        const float *rc_ = rows + c * d;
        int64_t kblocks = (nk + CB - 1) / CB;
        for (int64_t b = 0; b < kblocks; b++) {
            float *o[1] = { dots + b * CB };
            dot_blocks(kb + (size_t)b * CB * d, &rc_, 1, d, o);
        }
        /* lo[q] <= |c - kept q|^2 <= lo[q] + 2 e: the bound of a float dot */
        double up = INFINITY, e0 = 2.0 * (d + 4) * FLT_EPSILON;
#pragma omp simd reduction(min : up)
        for (int64_t q = 0; q < nk; q++) {
            double f = n2[c] + kn2[q] - 2.0 * (double)dots[q], s = nr[c] + knr[q], e = e0 * s * s;
            lo[q] = f - e;
            up = f + e < up ? f + e : up;
        }
        double lim = up < D2 ? up : D2, bd = INFINITY;
        int64_t best = -1;
        for (int64_t q = 0; q < nk; q++)
            if (lo[q] <= lim) {
                double x = dist2_rows(rc_, rows + keep[q] * d, d);
                if (best < 0 || x < bd) {
                    best = q;
                    bd = x;
                }
            }
        if (best >= 0 && bd <= D2) {
            to[c] = keep[best];
            continue;
        }
        to[c] = c;
        double m = INFINITY; /* squared lower bounds; roots taken once at the end */
#pragma omp simd reduction(min : m)
        for (int64_t q = 0; q < nk; q++) {
            double l = lo[q] > 0 ? lo[q] : 0.0;
            nn[q] = l < nn[q] ? l : nn[q];
            m = l < m ? l : m;
        }
        nn[nk] = m;
        if (m < dmin2) dmin2 = m;
        float *blk = kb + (size_t)(nk / CB) * CB * d + nk % CB;
        for (int i = 0; i < d; i++) blk[(size_t)i * CB] = rc_[i];
        kn2[nk] = n2[c];
        knr[nk] = nr[c];
        keep[nk++] = c;
    }
    for (int64_t q = 0; q < nk; q++) nn[q] = sqrt(nn[q]) * (1.0 - 1e-9); /* a little under the distance */
    *dmin = sqrt(dmin2) * (1.0 - 1e-9);
    for (int64_t c = 0; c < nc && !rc; c++)
        if (to[c] != c) rc = merge_reservoirs(g, to[c], c, err);
    if (rc) goto out; /* counts and keys stay consistent: merged pairs are whole */
    /* compact: kept centres keep their order, so moving down is safe */
    int64_t map_last = -1;
    g->cmax = 0.0;
    for (int64_t q = 0; q < nk; q++) {
        int64_t o = keep[q];
        if (g->last >= 0 && to[g->last] == o) map_last = q;
        float *cb = cblock(g, q) + q % CB;
        for (int i = 0; i < d; i++) cb[(size_t)i * CB] = rows[o * d + i];
        g->cnorm[q] = g->cnorm[o];
        g->cl[q] = g->cl[o];
        double cn = sqrt(g->cnorm[q] > 0 ? (double)g->cnorm[q] : 0.0);
        if (cn > g->cmax) g->cmax = cn;
        if (g->use_index) {
            float *cp = g->cproj + (q / CB) * CB * NP + q % CB;
            const float *op = g->cproj + (o / CB) * CB * NP + o % CB;
            for (int p = 0; p < NP; p++) cp[p * CB] = op[p * CB];
            g->nnd[q] = nn[q];
        }
    }
    /* the last block's unused lanes as open_cluster leaves them: zero, +inf */
    for (int64_t q = nk; q % CB; q++) {
        float *cb = cblock(g, q) + q % CB;
        for (int i = 0; i < d; i++) cb[(size_t)i * CB] = 0.0f;
        g->cnorm[q] = 0.0f;
        if (g->use_index)
            for (int p = 0; p < NP; p++) g->cproj[(q / CB) * CB * NP + q % CB + p * CB] = INFINITY;
    }
    g->nc = nk;
    g->last = map_last;
    g->layout++;
out:
    free(rows);
    free(kb);
    free(dots);
    free(keep);
    free(to);
    free(n2);
    free(nr);
    free(kn2);
    free(knr);
    free(lo);
    free(nn);
    return rc;
}

/* k matched no centre and the rank is at its cap: double delta and merge
 * until k joins a centre (returned) or there is room for it (-1; then
 * g->dist holds k's scan against the centres left, as open_cluster needs).
 * The next radius is at least the least distance between kept centres or
 * from k to one, so every round after the first merges or lets k join: the
 * loop ends, and delta only grows by doubling over the stream (at most
 * log2(diameter / delta) rounds in all, each O(cap^2 d)). */
static int64_t make_room(subgen *g, const float *k, float kn, const float *pk, kv_err *err)
{
    double D = 2.0 * g->delta;
    for (;;) {
        double dk = INFINITY, dmin;
        for (int64_t j = 0; j < g->nc && !(D > 0); j++) { /* delta = 0: start at k's nearest centre */
            double x = sqrt(dist2_centre(g, k, j));
            if (x < dk) dk = x;
        }
        if (!(D > 0)) D = dk;
        if (merge_at(g, D, &dmin, err)) break;
        g->delta = D;
        g->delta2 = D * D;
        g->doublings++;
        g->scanned = 0;
        int64_t c = find_cluster(g, k, kn, pk, NULL, 0);
        if (c >= 0 || g->nc < g->cap) return c; /* -1 comes from a full scan: g->dist is k's */
        dk = INFINITY;
        for (int64_t j = 0; j < g->nc; j++) {
            double x = sqrt(dist2_centre(g, k, j));
            if (x < dk) dk = x;
        }
        double next = dmin < dk ? dmin : dk;
        D = 2.0 * D > next ? 2.0 * D : next;
    }
    return -2;
}

/* ---- method ops -------------------------------------------------------- */

/* free the clusters and every per-cluster array (keys, centres, index) */
static void free_clusters(subgen *g)
{
    for (int64_t c = 0; c < g->nc; c++) {
        free(g->cl[c].keys);
        free(g->cl[c].vals);
    }
    free(g->cent);
    free(g->cnorm);
    free(g->cl);
    free(g->dist);
    free(g->cproj);
    free(g->nnd);
    free(g->pre);
    g->cent = g->cnorm = g->dist = g->cproj = g->pre = NULL;
    g->cl = NULL;
    g->nnd = NULL;
    g->nc = g->ccap = g->pre_cap = g->nres = 0;
}

static void subgen_free(void *state)
{
    subgen *g = state;
    if (!g) return;
    free_clusters(g);
    free(g->proj);
    kv_l2_clear(&g->l2);
    free(g->sk);
    free(g->sv);
    free(g->take);
    free(g->bk);
    free(g->bv);
    free(g);
}

/* Defaults: delta = 1 joins keys within distance 1 of a cluster's first key,
 * i.e. clusters whose members are about sigma sqrt(2d) <= 1 apart (README
 * "Choosing SubGen's parameters"), t = 16 is inside the 8-64 that works in
 * practice, s = 256 = O(eps^-2 d) for head dimensions up to 128 at eps ~
 * 0.7; the cluster cap 1024 keeps the clusters' memory flat in n however
 * small delta is (about 1024 (t d + d + 28) 4 bytes per stream) and a merge
 * round at about 1024^2 d / 16 vector operations, and the memory rule
 * (default_cap_half) keeps it within half of exact's at any n, delta and
 * data.  Data with more natural clusters than the cap needs clusters= (at
 * the cap delta grows past the cluster spacing and clusters merge).  The exact regime (delta = 0, t, s >= n) needs clusters >= n given. */
KV_CFG_FITS(kv_subgen_cfg);
const kv_param_def kv_subgen_params[] = {
    KV_PARAM_DOUBLE(kv_subgen_cfg, delta, 1.0, 0.0, DBL_MAX,
                    "join distance in key units: above the member distance sigma*sqrt(2d), delta*r <~ 1"),
    KV_PARAM_INT_DERIVED(kv_subgen_cfg, t, -1, "16", 1, INT32_MAX,
                         "keys sampled per cluster, over all ranks (8-64 in practice; estimator=joint with budget=: "
                         "sqrt(rows that fit / 2))"),
    KV_PARAM_INT(kv_subgen_cfg, s, 256, 1, 1 << 24, "l2 samples of values for the numerator, over all ranks (O(eps^-2 d))"),
    KV_PARAM_INT_DERIVED(kv_subgen_cfg, seed, -1, "--seed", 0, INT64_MAX,
                         "sampling seed (stream and rank are mixed in)"),
    KV_PARAM_INT(kv_subgen_cfg, index, 1, 0, 1, "1: skip centre scans by a bound that picks the same cluster (same results)"),
    KV_PARAM_INT_DERIVED(kv_subgen_cfg, clusters, -1, "1024", 1, INT64_C(1) << 40,
                         "cluster cap over all ranks (default 1024, at most what fits in half of exact's memory): at it delta doubles, clusters merge"),
    KV_PARAM_BUDGET(kv_subgen_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of s and clusters"),
    KV_PARAM_ENUM(kv_subgen_cfg, estimator, "paper|joint", 0,
                  "paper: the theorem's (l2-sampled numerator); joint: cluster samples carry values (no s)"),
    KV_PARAM_INT(kv_subgen_cfg, joint, 0, 0, 1, "older spelling of estimator: 0 paper, 1 joint"),
    KV_PARAM_TABLE_END
};

int kv_subgen_check(kv_subgen_cfg *c, const kv_param_def *defs, const kv_spec *spec, kv_err *err)
{
    if (kv_spec_has(spec, "estimator") && kv_spec_has(spec, "joint") && c->estimator != c->joint)
        return kv_params_error(defs, spec, err, "estimator=%s and joint=%lld disagree (joint= is its older spelling)",
                               c->estimator ? "joint" : "paper", (long long)c->joint);
    if (kv_spec_has(spec, "estimator")) c->joint = c->estimator;
    c->estimator = c->joint;
    if (c->budget.kind && (kv_spec_has(spec, "s") || kv_spec_has(spec, "clusters")))
        return kv_params_error(defs, spec, err, "give s and clusters or budget, not both");
    if (c->joint && kv_spec_has(spec, "s"))
        return kv_params_error(defs, spec, err, "estimator=joint keeps no l2 samples: s does not apply");
    return KV_OK;
}

static int subgen_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    return kv_subgen_check(cfg, kv_subgen_params, spec, err);
}

static int subgen_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    *out = NULL;
    const kv_subgen_cfg *c = kv_method_cfg(&kv_method_subgen, spec, err);
    if (!c) return err->code;
    return kv_subgen_new(c, spec->text, ctx, out, err);
}

/* What a rank holds whatever it has seen: the struct, the projection, F. */
static int64_t fixed_bytes(int d, int use_index)
{
    return (int64_t)sizeof(subgen) + (int64_t)sizeof(double) + (use_index ? NP * (int64_t)d * (int64_t)sizeof(float) : 0);
}

/* Per l2 sample: its key and value, the exact buffer's row (alive until the
 * (s+1)-th valued token, while the samples are held too), the sampler's id,
 * weight, threshold and heap slot, the offer scratch. */
static int64_t sample_bytes(int d, int dv)
{
    return 2 * (int64_t)(d + dv) * (int64_t)sizeof(float) + (int64_t)(kv_l2_bytes(&(kv_l2_sampler){ .s = 1 }) - sizeof(double)) +
           (int64_t)sizeof(int);
}

/* Budget rule (budget=X, B = kv_budget_bytes: bytes per stream over all
 * ranks).  Rank r gets its shard's share B_r = floor(B shard_r / n) (B / P
 * when the shard is unknown), so the shares add up to at most B at any rank
 * count.  Minus the fixed part, half goes to the l2 samples (sample_bytes
 * each, the exact buffer included) and half to clusters: a cluster costs its
 * slot (slot_bytes, allocated in blocks of CB) and t_r reservoir keys.  The
 * rank's s and cluster cap are what fits; everything it allocates is within
 * those capacities, so bytes() <= B_r at every step. */
static int budget_rule(const kv_budget *b, int64_t *t_r, int use_index, int joint, const char *text,
                       const kv_method_ctx *ctx, int64_t *s_r, int64_t *cap_r, kv_err *err)
{
    int d = ctx->d, dv = ctx->dv;
    int64_t B = kv_budget_bytes(b, ctx->n_total, d, dv), Br;
    if (ctx->shard_tokens > 0 && ctx->n_total > 0)
        Br = (int64_t)((__int128)B * ctx->shard_tokens / ctx->n_total);
    else
        Br = B / (ctx->nranks > 0 ? ctx->nranks : 1);
    /* joint: no l2 samples, the clusters get it all, each sample a key and
     * its value.  Without t=, t_r = sqrt(R / 2) of the R rows that fit, so
     * the cap is about 2 t_r: neither the cluster count m nor the sizes are
     * known, and a cap below m is the costly mistake (delta doubles until
     * clusters merge across the natural ones), a cap above m only leaves
     * rows unused (README: measured on the demo trace) */
    int64_t avail = Br - fixed_bytes(d, use_index), bs = joint ? 0 : avail / 2, bc = avail - bs;
    int64_t row = (int64_t)(joint ? d + dv : d) * (int64_t)sizeof(float);
    if (*t_r < 1) *t_r = bc > 2 * row ? (int64_t)sqrt((double)(bc / row) / 2.0) : 1;
    int64_t key = *t_r * row, slot = slot_bytes(d, use_index);
    int64_t s = bs > 0 ? bs / sample_bytes(d, dv) : 0, c = bc > 0 ? bc / (key + slot) : 0;
    while (c > 0 && c * key + (c + CB - 1) / CB * CB * slot > bc) c--;
    if (s > (1 << 24)) s = 1 << 24; /* the parameter's own range */
    if ((!joint && s < 1) || c < 1) {
        int64_t need = fixed_bytes(d, use_index) + 2 * (sample_bytes(d, dv) > key + CB * slot ? sample_bytes(d, dv) : key + CB * slot);
        return kv_seterr(err, KV_EINPUT, "--methods: %s: budget of %lld bytes leaves rank %d of %d %lld bytes, "
                         "less than one sample and one cluster (%lld bytes)", text, (long long)B, ctx->rank,
                         ctx->nranks, (long long)Br, (long long)need);
    }
    *s_r = s;
    *cap_r = c;
    return KV_OK;
}

/* The default cap's memory rule: the most clusters (a multiple of CB, at
 * least CB) whose slots and full reservoirs (t_r rows each, as the budget
 * rule counts them) fit in half of what exact holds for this rank's shard,
 * n_r (d + dv) 4 bytes (slots counted with the index, so that index=0
 * and 1 get the same cap and the same results).  So with no parameters the clusters can never take
 * more than half of exact's memory, whatever delta and the data are; the
 * l2 part (s samples and the exact buffer) adds s (2 (d + dv) 4 + ...)
 * bytes, within the other half when s <= n / 4. */
static int64_t default_cap_half(const kv_method_ctx *ctx, int64_t t_r, int joint)
{
    int64_t n = kv_shard_limit(ctx), d = ctx->d, dv = ctx->dv;
    double half = 0.5 * (double)n * (double)(d + dv) * sizeof(float);
    double per = (double)t_r * (double)(joint ? d + dv : d) * sizeof(float) + (double)slot_bytes((int)d, 1);
    double c = floor(half / per / CB) * CB;
    if (c > (double)(INT64_C(1) << 40)) c = (double)(INT64_C(1) << 40);
    return c < CB ? CB : (int64_t)c;
}

int kv_subgen_new(const kv_subgen_cfg *c, const char *text, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    int joint = (int)c->joint;
    /* t < 0 (not given): 16, or left to the budget rule with joint */
    int64_t t = c->t > 0 ? kv_rank_share(ctx, c->t) : joint && c->budget.kind ? 0 : kv_rank_share(ctx, 16);
    int64_t seed = c->seed, index = c->index, s = 0, cap = 0;
    *out = NULL;
    if (ctx->d < 1 || ctx->dv < 1)
        return kv_seterr(err, KV_EINPUT, "--methods: %s: needs d >= 1 and dv >= 1", text);
    if (ctx->semantics != KV_SEM_FULL)
        return kv_seterr(err, KV_EINPUT, "--methods: %s: subgen estimates full attention only", text);
    if (c->budget.kind) {
        if (budget_rule(&c->budget, &t, (int)index, joint, text, ctx, &s, &cap, err)) return err->code;
    } else {
        int64_t C = c->clusters;
        s = joint ? 0 : kv_rank_share(ctx, c->s);
        if (s > (1 << 24)) s = 1 << 24;
        if (C < 0) { /* derived default (see the table) */
            cap = kv_rank_share(ctx, 1024);
            int64_t half = default_cap_half(ctx, t, joint);
            if (half < cap) cap = half;
        } else
            cap = kv_rank_share(ctx, C);
    }
    if (t > INT32_MAX) t = INT32_MAX; /* the parameter's range (a huge budget's sqrt) */
    subgen *g = kv_calloc(1, sizeof *g, err);
    if (!g) return err->code;
    g->ctx = *ctx;
    g->delta = g->delta0 = c->delta;
    g->delta2 = c->delta * c->delta;
    g->t = t;
    g->s = (int)s;
    g->cap = cap;
    g->use_index = (int)index;
    g->joint = joint;
    g->last = -1;
    g->buf_on = !joint; /* joint: the reservoirs answer the numerator, exact or not */
    /* seed=<n> replaces --seed; stream and rank are mixed in either way */
    kv_rng_seed(&g->rng, seed < 0 ? ctx->seed : (uint64_t)seed, (uint64_t)ctx->stream, (uint64_t)ctx->rank);
    int d = ctx->d, dv = ctx->dv;
    if (!joint) {
        g->sk = kv_malloc(sizeof(float) * (size_t)s * (size_t)d, err);
        g->sv = kv_malloc(sizeof(float) * (size_t)s * (size_t)dv, err);
        g->take = kv_malloc(sizeof(int) * (size_t)s, err);
        if (!g->sk || !g->sv || !g->take || kv_l2_init(&g->l2, (int)s, err)) goto fail;
    }
    if (g->use_index) {
        /* the projection only steers guesses, never results: a fixed seed */
        g->proj = kv_malloc(sizeof(float) * NP * (size_t)d, err);
        if (!g->proj) goto fail;
        kv_rng pr;
        kv_rng_seed(&pr, 0x70726f6aULL, 0, 0);
        for (int i = 0; i < NP * d; i++) g->proj[i] = (float)kv_rng_normal(&pr);
    }
    *out = g;
    return KV_OK;
fail:
    subgen_free(g);
    return err->code;
}

/* store k (and v with joint) in slot of cluster c (slots fill in order
 * while n_c <= t) */
static int reservoir_store(subgen *g, int64_t c, int64_t slot, const float *k, const float *v, kv_err *err)
{
    cluster *cl = &g->cl[c];
    int d = g->ctx.d, dv = g->ctx.dv;
    if (slot >= cl->cap) { /* exactly the rows held: bytes() is what a packed cache needs */
        int64_t nc = slot + 1;
        float *p = realloc(cl->keys, sizeof(float) * (size_t)(nc * d));
        if (p) cl->keys = p;
        float *pv = p && g->joint ? realloc(cl->vals, sizeof(float) * (size_t)(nc * dv)) : NULL;
        if (pv) cl->vals = pv;
        if (!p || (g->joint && !pv)) /* keys may exceed cap: harmless, cap stays the rows both hold */
            return kv_seterr(err, KV_EINTERNAL, "subgen: out of memory for cluster samples");
        cl->cap = nc;
    }
    memcpy(cl->keys + slot * d, k, sizeof(float) * (size_t)d);
    if (g->joint) memcpy(cl->vals + slot * dv, v, sizeof(float) * (size_t)dv);
    return KV_OK;
}

/* one more token for the numerator: l2 samplers and the exact buffer */
static int value_token(subgen *g, const float *k, const float *v, int64_t id, kv_err *err)
{
    int d = g->ctx.d, dv = g->ctx.dv;
    double w = norm2_exact(v, dv);
    if (!(w > 0.0) || !isfinite(w)) return KV_OK; /* contributes nothing */
    g->nval++;
    if (g->buf_on) {
        if (g->nval > g->s) { /* too many to hold: from now on the samplers answer */
            free(g->bk);
            free(g->bv);
            g->bk = g->bv = NULL;
            g->nbuf = g->bcap = 0;
            g->buf_on = 0;
        } else {
            if (g->nbuf == g->bcap) {
                int64_t nc = bcap_for(g, g->nbuf + 1);
                float *bk = realloc(g->bk, sizeof(float) * (size_t)(nc * d));
                if (bk) g->bk = bk;
                float *bv = bk ? realloc(g->bv, sizeof(float) * (size_t)(nc * dv)) : NULL;
                if (bv) g->bv = bv;
                if (!bk || !bv) /* bk may be larger than bcap: harmless, freed with the buffer */
                    return kv_seterr(err, KV_EINTERNAL, "subgen: out of memory for the exact buffer");
                g->bcap = nc;
            }
            memcpy(g->bk + g->nbuf * d, k, sizeof(float) * (size_t)d);
            memcpy(g->bv + g->nbuf * dv, v, sizeof(float) * (size_t)dv);
            g->nbuf++;
        }
    }
    int nt = kv_l2_offer(&g->l2, &g->rng, id, w, g->take);
    for (int i = 0; i < nt; i++) {
        int j = g->take[i];
        memcpy(g->sk + (size_t)j * d, k, sizeof(float) * (size_t)d);
        memcpy(g->sv + (size_t)j * dv, v, sizeof(float) * (size_t)dv);
    }
    return KV_OK;
}

/* Scan keys i .. i+nk-1 against all centres in one batched pass. */
static void scan_ahead(subgen *g, const float *K, size_t i, int nk)
{
    int d = g->ctx.d; /* pre has GK rows of ccap floats (realloc_clusters) */
    const float *ks[GK];
    float kn[GK], *rows[GK];
    for (int q = 0; q < nk; q++) {
        ks[q] = K + (i + (size_t)q) * d;
        kn[q] = dot1(ks[q], ks[q], d);
        rows[q] = g->pre + (size_t)q * g->pre_cap;
    }
    scan_from(g, ks, kn, nk, 0, rows);
}

static int subgen_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    subgen *g = state;
    int d = g->ctx.d, dv = g->ctx.dv;
    float pk[NP];
    size_t pre_first = 0, pre_end = 0;
    int64_t pre_nc = 0;
    for (size_t i = 0; i < n; i++) {
        const float *k = K + i * (size_t)d, *v = V + i * (size_t)dv;
        /* Scan ahead in batches when scans are what this stream needs (no
         * index, or the index has mostly failed lately).  The choice only
         * affects speed: every distance comes out bitwise the same. */
        int want = !g->use_index || g->nc < IDX_MIN || __builtin_popcount(g->hist) >= 4;
        if (i >= pre_end && want && g->nc > 0 && n - i >= 2) {
            int nk = n - i < GK ? (int)(n - i) : GK;
            scan_ahead(g, K, i, nk);
            pre_first = i;
            pre_end = i + (size_t)nk;
            pre_nc = g->nc;
        }
        const float *pre = i < pre_end ? g->pre + (i - pre_first) * (size_t)g->pre_cap : NULL;
        float kn = dot1(k, k, d);
        if (g->use_index) project(g, k, pk);
        g->scanned = 0;
        int64_t c = find_cluster(g, k, kn, pk, pre, pre_nc), layout = g->layout;
        g->hist = ((g->hist << 1) | (unsigned)g->scanned) & 0xffu;
        if (c < 0 && g->nc >= g->cap && (c = make_room(g, k, kn, pk, err)) < -1) return err->code;
        if (c < 0) {
            if (open_cluster(g, k, kn, pk, err)) return err->code;
            c = g->nc - 1;
        }
        if (g->layout != layout) pre_end = 0; /* rows computed ahead are for centres that moved */
        g->last = c;
        int64_t before = kv_reservoir_size(&g->cl[c].r);
        int64_t slot = kv_reservoir_offer(&g->cl[c].r, &g->rng);
        if (slot >= 0 && reservoir_store(g, c, slot, k, v, err)) {
            g->cl[c].r.n--; /* leave the state as it was */
            return err->code;
        }
        g->nres += kv_reservoir_size(&g->cl[c].r) - before;
        if (!g->joint && value_token(g, k, v, first + (int64_t)i, err)) return err->code;
    }
    return KV_OK;
}

/* Up to CB queries at once, one per lane: the queries are transposed into
 * QT (d rows of CB floats) and dot_blocks gives the CB logits of a key with
 * one SIMD multiply-add per coordinate.  Lanes never mix, so a query's state
 * is bitwise the same whatever batch it comes in.  S holds nall rows of CB
 * logits: reservoir keys cluster by cluster, then the numerator keys. */
static void block_states(const subgen *g, const float *Q, int nq, float *QT, float *S, int64_t nall, double *st)
{
    int d = g->ctx.d, dv = g->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv);
    memset(QT, 0, sizeof(float) * CB * (size_t)d);
    for (int q = 0; q < nq; q++)
        for (int i = 0; i < d; i++) QT[(size_t)i * CB + q] = Q[(size_t)q * d + i];

    /* logits, GK keys per pass over QT */
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
                dot_blocks(QT, kp, GK, d, op);
                nk = 0;
            }
        }
    }
    for (int q = 0; q < nk; q++) dot_blocks(QT, kp + q, 1, d, op + q);

    /* scale, one max per lane over every logit, exp */
    vecf m, r, sc = (vecf){ 0 } + (float)g->ctx.scale;
    for (int l = 0; l < CB; l++) m[l] = -INFINITY;
    for (int64_t i = 0; i < nall; i++) {
        memcpy(&r, S + i * CB, sizeof r);
        r *= sc;
        memcpy(S + i * CB, &r, sizeof r);
        m = (vecf)(((veci)r & (r > m)) | ((veci)m & ~(r > m)));
    }
    for (int64_t i = 0; i < nall; i++) {
        memcpy(&r, S + i * CB, sizeof r);
        r -= m;
        memcpy(S + i * CB, &r, sizeof r);
    }
    kv_expf_neg(S, (size_t)nall * CB);

    /* denominator: sum_c (n_c / |sample_c|) sum_{k in sample_c} e^{a - m} */
    double l[CB] = { 0 };
    row = 0;
    for (int64_t c = 0; c < g->nc; c++) {
        int64_t ns = kv_reservoir_size(&g->cl[c].r);
        double e[CB] = { 0 }, w = (double)g->cl[c].r.n / (double)ns;
        for (int64_t j = 0; j < ns; j++, row++)
            for (int q = 0; q < CB; q++) e[q] += S[row * CB + q];
        for (int q = 0; q < CB; q++) l[q] += w * e[q];
    }
    /* numerator: joint: the denominator's samples with their values,
     * sum_c (n_c / |sample_c|) sum_{(k,v) in sample_c} e^{a - m} v; else the
     * exact buffer, or (1/s) sum_j e^{a_j - m} v_j F / |v_j|^2 */
    for (int q = 0; q < nq; q++) {
        double *o = st + (size_t)q * sl, *u = o + KV_PS_U;
        memset(u, 0, sizeof(double) * (size_t)dv);
        if (g->joint) {
            int64_t rr = 0;
            for (int64_t c = 0; c < g->nc; c++) {
                int64_t ns = kv_reservoir_size(&g->cl[c].r);
                double w = (double)g->cl[c].r.n / (double)ns;
                for (int64_t j = 0; j < ns; j++, rr++) {
                    double e = w * S[rr * CB + q];
                    const float *v = g->cl[c].vals + j * dv;
                    for (int x = 0; x < dv; x++) u[x] += e * v[x];
                }
            }
        }
        for (int64_t j = 0; row + j < nall; j++) {
            double e = S[(row + j) * CB + q];
            const float *v;
            if (g->buf_on) {
                v = g->bv + j * dv;
            } else {
                e *= g->l2.F / ((double)g->s * g->l2.w[j]);
                v = g->sv + j * dv;
            }
            for (int c = 0; c < dv; c++) u[c] += e * v[c];
        }
        o[KV_PS_M] = m[q];
        o[KV_PS_L] = l[q];
        o[KV_PS_L2] = 0.0;
    }
}

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

static int subgen_partial(void *state, const float *Q, int nq, int64_t p, double *st)
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
        float *S = malloc(sizeof(float) * CB * (size_t)nall), *QT = malloc(sizeof(float) * CB * (size_t)d);
        bad = !S || !QT;
#pragma omp for schedule(dynamic, 1)
        for (int b = 0; b < nb; b++) {
            if (bad) continue; /* this thread has no scratch; the call fails */
            int q0 = b * CB, n = nq - q0 < CB ? nq - q0 : CB;
            block_states(g, Q + (size_t)q0 * d, n, QT, S, nall, st + (size_t)q0 * sl);
        }
        free(S);
        free(QT);
    }
    return bad ? KV_EINTERNAL : KV_OK;
}

/* Everything allocated (budget_rule's units): capacities, not just what is used. */
static size_t subgen_bytes(const void *state)
{
    const subgen *g = state;
    size_t d = (size_t)g->ctx.d, dv = (size_t)g->ctx.dv;
    size_t b = (size_t)fixed_bytes(g->ctx.d, g->use_index);
    b += (size_t)g->ccap * (size_t)slot_bytes(g->ctx.d, g->use_index); /* per-cluster arrays */
    b += (size_t)g->nres * (g->joint ? d + dv : d) * sizeof(float);   /* reservoir keys, joint's values (held = allocated) */
    b += (size_t)g->s * (size_t)sample_bytes(g->ctx.d, g->ctx.dv) - (size_t)g->s * (d + dv) * sizeof(float);
    b += (size_t)g->bcap * (d + dv) * sizeof(float); /* the exact buffer while it lives */
    return b;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void subgen_cost(const void *state, kv_query_cost *c)
{
    *c = ((const subgen *)state)->cost;
}

static void subgen_extra(const void *state, kv_method_extra *x)
{
    const subgen *g = state;
    x->clusters = g->nc;
    int64_t kept = g->nres;
    if (g->buf_on) {
        kept += g->nbuf;
    } else if (g->l2.F > 0.0) { /* distinct tokens among the s samples */
        int64_t *ids = malloc(sizeof(int64_t) * (size_t)g->s);
        if (ids) {
            memcpy(ids, g->l2.item, sizeof(int64_t) * (size_t)g->s);
            qsort(ids, (size_t)g->s, sizeof(int64_t), cmp_i64);
            for (int j = 0; j < g->s; j++) kept += j == 0 || ids[j] != ids[j - 1];
            free(ids);
        } else {
            kept += g->s;
        }
    }
    x->kept_tokens = kept;
}

/* ---- checkpoints ------------------------------------------------------- */

#define SG_MAGIC INT64_C(0x336e656762757376)  /* "vsubgen3": joint=1's values added */
#define SG_MAGIC2 INT64_C(0x326e656762757376) /* "vsubgen2": before them, refused */

/* Saved, in this order: magic, d, dv, t, s, index, delta and the cluster
 * cap (the rank's, checked on load), the current delta, the doublings so
 * far, the per-cluster capacity (bytes() counts it; merges leave it above
 * what a fresh layout would take), the generator, the scan history and the
 * last token's cluster; the
 * centres as nc rows of d floats, |c|^2, the counts n_c, the reservoir keys
 * (one array, cluster after cluster, min(n_c, t) rows each), the index's
 * lower bounds nnd (empty with index=0); the l2 samplers (kv_l2_save) and
 * their pairs (s rows of keys and of values once F > 0, else none), not
 * written with joint=1 (s = 0); the exact buffer's switch, nval and its rows
 * (0, 0, none with joint); the reservoirs' values like their keys (joint=1;
 * else none).  Every array is in
 * kv_buf_put_arr's format (byte length, then bytes).
 * Recomputed on load, bit for bit: the block layout of the centres with its
 * padding, the projected centres (proj comes from a fixed seed; projecting a
 * centre repeats what ingest did with the key that opened it), cmax, nres.
 * Capacities and scratch are not state: they never change a result. */
static void subgen_save(const void *state, kv_buf *out)
{
    const subgen *g = state;
    int d = g->ctx.d, dv = g->ctx.dv;
    size_t rowb = sizeof(float) * (size_t)d, nc = (size_t)g->nc;
    float *row = malloc(rowb);
    if (!row) { /* save cannot return an error: mark the buffer unusable */
        out->failed = 1;
        return;
    }
    kv_buf_put_i64(out, SG_MAGIC);
    kv_buf_put_i64(out, d);
    kv_buf_put_i64(out, dv);
    kv_buf_put_i64(out, g->t);
    kv_buf_put_i64(out, g->s);
    kv_buf_put_i64(out, g->use_index);
    kv_buf_put_f64(out, g->delta0);
    kv_buf_put_i64(out, g->cap);
    kv_buf_put_f64(out, g->delta);
    kv_buf_put_i64(out, g->doublings);
    kv_buf_put_i64(out, g->ccap);
    kv_buf_put(out, g->rng.s, sizeof g->rng.s);
    kv_buf_put_i64(out, (int64_t)g->hist);
    kv_buf_put_i64(out, g->last);
    kv_buf_put_i64(out, (int64_t)(nc * rowb)); /* centres: rows out of the blocks */
    for (size_t c = 0; c < nc; c++) {
        const float *cb = cblock(g, (int64_t)c) + c % CB;
        for (int i = 0; i < d; i++) row[i] = cb[(size_t)i * CB];
        kv_buf_put(out, row, rowb);
    }
    kv_buf_put_arr(out, g->cnorm, nc * sizeof(float));
    kv_buf_put_i64(out, (int64_t)(nc * sizeof(int64_t)));
    for (size_t c = 0; c < nc; c++) kv_buf_put_i64(out, g->cl[c].r.n);
    kv_buf_put_i64(out, (int64_t)((size_t)g->nres * rowb));
    for (size_t c = 0; c < nc; c++) kv_buf_put(out, g->cl[c].keys, (size_t)kv_reservoir_size(&g->cl[c].r) * rowb);
    kv_buf_put_arr(out, g->nnd, g->use_index ? nc * sizeof(double) : 0);
    if (!g->joint) {
        kv_l2_save(&g->l2, out);
        size_t held = g->l2.F > 0.0 ? (size_t)g->s : 0;
        kv_buf_put_arr(out, g->sk, held * rowb);
        kv_buf_put_arr(out, g->sv, held * (size_t)dv * sizeof(float));
    }
    kv_buf_put_i64(out, g->buf_on);
    kv_buf_put_i64(out, g->nval);
    kv_buf_put_arr(out, g->bk, (size_t)g->nbuf * rowb);
    kv_buf_put_arr(out, g->bv, (size_t)g->nbuf * (size_t)dv * sizeof(float));
    size_t rowv = sizeof(float) * (size_t)dv;
    kv_buf_put_i64(out, (int64_t)(g->joint ? (size_t)g->nres * rowv : 0));
    for (size_t c = 0; c < nc && g->joint; c++)
        kv_buf_put(out, g->cl[c].vals, (size_t)kv_reservoir_size(&g->cl[c].r) * rowv);
    free(row);
}

/* Lay nc clusters out in t as ingest would have: centres C (rows) in blocks
 * with zero padding, |c|^2 N, counts cnt, reservoir keys R and (joint)
 * values RV (cluster after cluster), the index (cproj projected again,
 * padding +inf; nnd); capacity cap (saved).  t holds no clusters on entry. */
static int build_clusters(subgen *t, const float *C, const float *N, const int64_t *cnt, const float *R,
                          const float *RV, const double *nnd, int64_t nc, int64_t cap, kv_err *err)
{
    int d = t->ctx.d, dv = t->ctx.dv;
    if (cap == 0) return KV_OK;
    t->cent = calloc((size_t)(cap * d), sizeof(float));
    t->cnorm = calloc((size_t)cap, sizeof(float));
    t->cl = calloc((size_t)cap, sizeof(cluster));
    t->dist = malloc(sizeof(float) * (size_t)cap);
    t->pre = malloc(sizeof(float) * GK * (size_t)cap);
    if (t->use_index) {
        t->cproj = malloc(sizeof(float) * (size_t)(cap * NP));
        t->nnd = malloc(sizeof(double) * (size_t)cap);
    }
    if (!t->cent || !t->cnorm || !t->cl || !t->dist || !t->pre || (t->use_index && (!t->cproj || !t->nnd)))
        return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring %lld subgen clusters", (long long)nc);
    t->ccap = t->pre_cap = cap;
    t->nc = nc; /* keys are NULL until allocated: free_clusters can run at any point */
    if (t->use_index)
        for (int64_t i = 0; i < cap * NP; i++) t->cproj[i] = INFINITY;
    const float *keys = R, *vals = RV;
    for (int64_t c = 0; c < nc; c++) {
        const float *k = C + c * d;
        float *cb = cblock(t, c) + c % CB;
        for (int i = 0; i < d; i++) cb[(size_t)i * CB] = k[i];
        t->cnorm[c] = N[c];
        double knorm = sqrt(N[c] > 0 ? (double)N[c] : 0.0);
        if (knorm > t->cmax) t->cmax = knorm;
        cluster *cl = &t->cl[c];
        kv_reservoir_init(&cl->r, t->t);
        cl->r.n = cnt[c];
        int64_t size = kv_reservoir_size(&cl->r);
        cl->keys = malloc(sizeof(float) * (size_t)(size * d));
        cl->vals = t->joint ? malloc(sizeof(float) * (size_t)(size * dv)) : NULL;
        if (!cl->keys || (t->joint && !cl->vals))
            return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring subgen samples");
        cl->cap = size;
        memcpy(cl->keys, keys, sizeof(float) * (size_t)(size * d));
        keys += size * d;
        if (t->joint) {
            memcpy(cl->vals, vals, sizeof(float) * (size_t)(size * dv));
            vals += size * dv;
        }
        t->nres += size;
        if (t->use_index) {
            float pk[NP], *cp = t->cproj + (c / CB) * CB * NP + c % CB;
            project(t, k, pk);
            for (int p = 0; p < NP; p++) cp[p * CB] = pk[p];
            t->nnd[c] = nnd[c];
        }
    }
    return KV_OK;
}

/* Restore what subgen_save wrote into a state fresh from subgen_create (same
 * spec and ctx).  Everything is read and checked before anything is built;
 * the state is only changed on success. */
static int subgen_load(void *state, kv_rd *in, kv_err *err)
{
    subgen *g = state;
    int d = g->ctx.d, dv = g->ctx.dv;
    int64_t lim = kv_shard_limit(&g->ctx);
    size_t mx = (size_t)(lim > 0 ? lim : 0), s = (size_t)g->s;
    int64_t hdr[6], hist, last, buf_on, nval, total = 0, nres = 0, cap, doublings, ccap;
    double delta0, delta;
    kv_rng rng;
    void *C = NULL, *N = NULL, *cnt = NULL, *R = NULL, *nnd = NULL, *SK = NULL, *SV = NULL, *BK = NULL, *BV = NULL;
    void *RV = NULL;
    size_t nc = 0, nn = 0, ncnt = 0, nr = 0, nnn = 0, nsk = 0, nsv = 0, nbk = 0, nbv = 0, nrv = 0;
    kv_l2_sampler l2 = { 0 };
    subgen t = *g; /* the restored state, built aside */
    t.nc = t.ccap = t.pre_cap = t.nres = 0;
    t.cent = t.cnorm = t.dist = t.cproj = t.pre = NULL;
    t.cl = NULL;
    t.nnd = NULL;
    t.cmax = 0.0;
    const char *bad = NULL;

    for (int i = 0; i < 6; i++) {
        if (kv_rd_i64(in, &hdr[i], err)) goto fail;
        if (i == 0 && hdr[0] == SG_MAGIC2) {
            bad = "is in the older format vsubgen2 (before joint=): rerun without --resume";
            goto bad;
        }
    }
    if (kv_rd_f64(in, &delta0, err) || kv_rd_i64(in, &cap, err) || kv_rd_f64(in, &delta, err) ||
        kv_rd_i64(in, &doublings, err) || kv_rd_i64(in, &ccap, err) || kv_rd_get(in, rng.s, sizeof rng.s, err) ||
        kv_rd_i64(in, &hist, err) || kv_rd_i64(in, &last, err))
        goto fail;
    if (hdr[0] != SG_MAGIC || hdr[1] != d || hdr[2] != dv || hdr[3] != g->t || hdr[4] != g->s ||
        hdr[5] != g->use_index || memcmp(&delta0, &g->delta0, sizeof delta) || cap != g->cap) {
        bad = "was saved with another spec, d, dv or rank count";
        goto bad;
    }
    /* delta only grows from the spec's, at least doubling per round (after a
     * first round from 0): a finite double allows some 2100 rounds in all */
    if (!(delta >= delta0) || !isfinite(delta) || doublings < 0 || doublings > 2200 ||
        (doublings == 0) != (delta == delta0)) {
        bad = "has a bad doubled delta";
        goto bad;
    }
    if (!(rng.s[0] | rng.s[1] | rng.s[2] | rng.s[3])) { bad = "has a zero generator state"; goto bad; }
    if (hist < 0 || hist > 0xff) { bad = "has a bad scan history"; goto bad; }

    /* clusters: centres, |c|^2, counts, reservoir keys, index bounds */
    if (kv_rd_arr(in, &C, sizeof(float) * (size_t)d, mx, &nc, err) ||
        kv_rd_arr(in, &N, sizeof(float), mx, &nn, err) || kv_rd_arr(in, &cnt, sizeof(int64_t), mx, &ncnt, err) ||
        kv_rd_arr(in, &R, sizeof(float) * (size_t)d, mx, &nr, err) ||
        kv_rd_arr(in, &nnd, sizeof(double), mx, &nnn, err))
        goto fail;
    if (nn != nc || ncnt != nc || nnn != (g->use_index ? nc : 0)) {
        bad = "has cluster arrays of different lengths";
        goto bad;
    }
    for (size_t c = 0; c < nc; c++) {
        int64_t n = ((int64_t *)cnt)[c];
        float cn = ((float *)N)[c];
        if (n < 1 || n > lim - total) { bad = "has cluster counts beyond the rank's tokens"; goto bad; }
        total += n;
        nres += n < g->t ? n : g->t;
        if (!(cn >= 0.0f) || !isfinite(cn)) { bad = "has a bad centre norm"; goto bad; }
        if (nnn && !(((double *)nnd)[c] >= 0.0)) { bad = "has a bad index bound"; goto bad; }
    }
    if ((int64_t)nr != nres) { bad = "has reservoir keys that do not match the cluster counts"; goto bad; }
    if ((int64_t)nc > g->cap || (ccap ? ccap < (int64_t)nc || ccap != ccap_for(g, ccap) : nc != 0)) {
        bad = "has more clusters than its cap or a bad cluster capacity";
        goto bad;
    }
    if (nc ? (last < 0 || last >= (int64_t)nc) : last != -1) { bad = "has a bad last cluster index"; goto bad; }
    if (!kv_all_finite(C, nc * (size_t)d) || !kv_all_finite(R, nr * (size_t)d)) {
        bad = "has a key that is not finite";
        goto bad;
    }

    /* l2 samplers and their pairs (not with joint), the exact buffer, the
     * reservoirs' values (joint only) */
    if (!g->joint && (kv_l2_load(&l2, g->s, in, g->ctx.n_total, err) ||
                      kv_rd_arr(in, &SK, sizeof(float) * (size_t)d, s, &nsk, err) ||
                      kv_rd_arr(in, &SV, sizeof(float) * (size_t)dv, s, &nsv, err)))
        goto fail;
    if (kv_rd_i64(in, &buf_on, err) || kv_rd_i64(in, &nval, err) ||
        kv_rd_arr(in, &BK, sizeof(float) * (size_t)d, s, &nbk, err) ||
        kv_rd_arr(in, &BV, sizeof(float) * (size_t)dv, s, &nbv, err) ||
        kv_rd_arr(in, &RV, sizeof(float) * (size_t)dv, mx, &nrv, err))
        goto fail;
    size_t held = l2.F > 0.0 ? s : 0;
    if (nsk != held || nsv != held) { bad = "has l2 samples that do not match its samplers"; goto bad; }
    if (nval < 0 || nval > total || (nval > 0) != (l2.F > 0.0) || buf_on != (!g->joint && nval <= g->s) ||
        nbk != (buf_on ? (size_t)nval : 0) || nbv != nbk) {
        bad = "has an inconsistent exact buffer";
        goto bad;
    }
    if ((int64_t)nrv != (g->joint ? nres : 0)) { bad = "has reservoir values that do not match its keys"; goto bad; }
    if (!kv_all_finite(SK, nsk * (size_t)d) || !kv_all_finite(SV, nsv * (size_t)dv) ||
        !kv_all_finite(BK, nbk * (size_t)d) || !kv_all_finite(BV, nbv * (size_t)dv) ||
        !kv_all_finite(RV, nrv * (size_t)dv)) {
        bad = "has a key or value that is not finite";
        goto bad;
    }

    if (build_clusters(&t, C, N, cnt, R, RV, nnd, (int64_t)nc, ccap, err)) goto fail;
    t.delta = delta;
    t.delta2 = delta * delta;
    t.doublings = doublings;
    t.bcap = nbk ? bcap_for(g, (int64_t)nbk) : 0; /* as value_token grows it */
    if (nbk) {
        void *bk = realloc(BK, sizeof(float) * (size_t)(t.bcap * d));
        if (bk) BK = bk;
        void *bv = bk ? realloc(BV, sizeof(float) * (size_t)(t.bcap * dv)) : NULL;
        if (bv) BV = bv;
        if (!bk || !bv) {
            kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring the subgen exact buffer");
            goto fail;
        }
    }
    t.rng = rng;
    t.hist = (unsigned)hist;
    t.last = last;
    t.l2 = l2;
    if (held) {
        memcpy(t.sk, SK, sizeof(float) * held * (size_t)d); /* t.sk is g->sk */
        memcpy(t.sv, SV, sizeof(float) * held * (size_t)dv);
    }
    t.buf_on = (int)buf_on;
    t.nval = nval;
    t.nbuf = (int64_t)nbk;
    t.bk = BK;
    t.bv = BV;
    free_clusters(g);
    kv_l2_clear(&g->l2);
    free(g->bk);
    free(g->bv);
    *g = t;
    free(C); free(N); free(cnt); free(R); free(RV); free(nnd); free(SK); free(SV);
    return KV_OK;
bad:
    kv_seterr(err, KV_EINPUT, "checkpoint: subgen state %s", bad);
fail:
    free_clusters(&t);
    kv_l2_clear(&l2);
    free(C); free(N); free(cnt); free(R); free(RV); free(nnd); free(SK); free(SV); free(BK); free(BV);
    return err->code;
}

/* Worst case: min(cap, shard) clusters' slots, min(shard, cap t) reservoir
 * keys, the exact buffer at min(s, shard) rows while the s samples are
 * held: reached exactly on distinct keys with delta = 0, s >= n. */
static int64_t subgen_max_bytes(const void *state)
{
    const subgen *g = state;
    int64_t lim = kv_shard_limit(&g->ctx), d = g->ctx.d, dv = g->ctx.dv, f = (int64_t)sizeof(float);
    int64_t ncl = g->cap < lim ? g->cap : lim, keys = g->cap > lim / g->t ? lim : g->cap * g->t;
    int64_t b = fixed_bytes(g->ctx.d, g->use_index) + ccap_for(g, ncl) * slot_bytes(g->ctx.d, g->use_index);
    b += keys * (g->joint ? d + dv : d) * f + (int64_t)g->s * (sample_bytes(g->ctx.d, g->ctx.dv) - (d + dv) * f);
    return b + bcap_for(g, g->s < lim ? g->s : lim) * (d + dv) * f;
}

const kv_method_ops kv_method_subgen = {
    .name = "subgen",
    .kind = "sketch",
    .summary = "SubGen: online key clusters of radius delta with t-key reservoirs, plus s l2 samples of values "
               "(estimator=joint: reservoirs carry values instead)",
    .budget = "clusters x (t keys [+ values with estimator=joint] + centre) + s samples, over all ranks; budget=X picks s "
              "and clusters (estimator=joint: t and clusters)",
    .params = kv_subgen_params,
    .cfg_size = sizeof(kv_subgen_cfg),
    .check = subgen_check,
    .create = subgen_create,
    .ingest = subgen_ingest,
    .partial = subgen_partial,
    .bytes = subgen_bytes,
    .extra = subgen_extra,
    .cost = subgen_cost,
    .free = subgen_free,
    .save = subgen_save,
    .load = subgen_load,
    .max_bytes = subgen_max_bytes,
    .conform = { "delta=1,t=4,s=8;delta=0.5,t=8,s=16,seed=3,index=0", KV_PINV_NO },
};
