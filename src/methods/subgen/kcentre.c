/* kcentre.c - SubGen's cluster cap (subgen.c has the overview): when a key
 * matches no centre and the rank holds its cap of clusters, delta doubles
 * and clusters merge (the doubling rule of online k-centre, Charikar,
 * Chekuri, Feder, Motwani 1997), with reservoirs merged exactly by weighted
 * sampling without replacement. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/subgen/state.h"

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

/* Scratch of one merge round over nc centres: their rows and exact norms,
 * the kept centres in transposed blocks (kb) with their norms, the float
 * dots of a centre with the kept ones and their lower bounds (lo), what
 * each centre joins (to), and the squared lower bounds of the kept
 * centres' nearest distances (nn; dmin2 their least). */
typedef struct {
    float *rows, *kb, *dots;
    int64_t *keep, *to, nk;
    double *n2, *nr, *kn2, *knr, *lo, *nn, dmin2;
} merge_work;

static void work_free(merge_work *w)
{
    free(w->rows);
    free(w->kb);
    free(w->dots);
    free(w->keep);
    free(w->to);
    free(w->n2);
    free(w->nr);
    free(w->kn2);
    free(w->knr);
    free(w->lo);
    free(w->nn);
}

/* the scratch, with the centres' rows and norms filled in; 0 if out of memory */
static int work_init(merge_work *w, const subgen *g)
{
    int d = g->ctx.d;
    int64_t nc = g->nc, nb = (nc + CB - 1) / CB;
    size_t n = (size_t)nc;
    *w = (merge_work){ .dmin2 = INFINITY };
    w->rows = malloc(sizeof(float) * (size_t)(nc * d));
    w->kb = calloc((size_t)(nb * CB) * (size_t)d, sizeof(float));
    w->dots = malloc(sizeof(float) * (size_t)(nb * CB));
    w->keep = malloc(sizeof(int64_t) * n);
    w->to = malloc(sizeof(int64_t) * n);
    w->n2 = malloc(sizeof(double) * n);
    w->nr = malloc(sizeof(double) * n);
    w->kn2 = malloc(sizeof(double) * n);
    w->knr = malloc(sizeof(double) * n);
    w->lo = malloc(sizeof(double) * n);
    w->nn = malloc(sizeof(double) * n);
    if (!w->rows || !w->kb || !w->dots || !w->keep || !w->to || !w->n2 || !w->nr || !w->kn2 || !w->knr ||
        !w->lo || !w->nn)
        return 0;
    for (int64_t c = 0; c < nc; c++) {
        centre_row(g, c, w->rows + c * d);
        w->n2[c] = kv_norm2_f64(w->rows + c * d, d);
        w->nr[c] = sqrt(w->n2[c]);
    }
    return 1;
}

/* The kept centre nearest to centre c among those the float bound cannot
 * rule out (within D2 or the least upper bound), by exact double distance
 * (ties to the lowest): its index q, -1 if none; *bd its squared distance.
 * Leaves in w->lo the lower bounds of c's distances to the kept centres. */
static int64_t nearest_kept(merge_work *w, int64_t c, int d, double D2, double *bd)
{
    const float *rc_ = w->rows + c * d;
    int64_t nk = w->nk, kblocks = (nk + CB - 1) / CB;
    double *lo = w->lo;
    for (int64_t b = 0; b < kblocks; b++) {
        float *o[1] = { w->dots + b * CB };
        kv_dot_blocks(w->kb + (size_t)b * CB * d, &rc_, 1, d, o);
    }
    /* lo[q] <= |c - kept q|^2 <= lo[q] + 2 e: the bound of a float dot */
    double up = INFINITY, e0 = 2.0 * (d + 4) * FLT_EPSILON;
    const double *n2 = w->n2, *kn2 = w->kn2, *nr = w->nr, *knr = w->knr;
    const float *dots = w->dots;
#pragma omp simd reduction(min : up)
    for (int64_t q = 0; q < nk; q++) {
        double f = n2[c] + kn2[q] - 2.0 * (double)dots[q], s = nr[c] + knr[q], e = e0 * s * s;
        lo[q] = f - e;
        up = f + e < up ? f + e : up;
    }
    double lim = up < D2 ? up : D2;
    int64_t best = -1;
    *bd = INFINITY;
    for (int64_t q = 0; q < nk; q++)
        if (lo[q] <= lim) {
            double x = kv_dist2_f64(rc_, w->rows + w->keep[q] * d, d);
            if (best < 0 || x < *bd) {
                best = q;
                *bd = x;
            }
        }
    return best;
}

/* Centre c is kept: the bounds w->lo (from nearest_kept) lower the kept
 * centres' nearest distances and give c's own; c joins the kept blocks. */
static void keep_centre(merge_work *w, int64_t c, int d)
{
    int64_t nk = w->nk;
    const double *lo = w->lo;
    double *nn = w->nn;
    w->to[c] = c;
    double m = INFINITY; /* squared lower bounds; roots taken once at the end */
#pragma omp simd reduction(min : m)
    for (int64_t q = 0; q < nk; q++) {
        double l = lo[q] > 0 ? lo[q] : 0.0;
        nn[q] = l < nn[q] ? l : nn[q];
        m = l < m ? l : m;
    }
    nn[nk] = m;
    if (m < w->dmin2) w->dmin2 = m;
    const float *rc_ = w->rows + c * d;
    float *blk = w->kb + (size_t)(nk / CB) * CB * d + nk % CB;
    for (int i = 0; i < d; i++) blk[(size_t)i * CB] = rc_[i];
    w->kn2[nk] = w->n2[c];
    w->knr[nk] = w->nr[c];
    w->keep[w->nk++] = c;
}

/* Move the kept centres down to 0 .. nk-1 (they keep their order, so moving
 * down is safe) with their norms, clusters, projections and bounds; the
 * last block's unused lanes as open_cluster leaves them (zero, +inf). */
static void compact(subgen *g, const merge_work *w)
{
    int d = g->ctx.d;
    int64_t nk = w->nk, map_last = -1;
    g->cmax = 0.0;
    for (int64_t q = 0; q < nk; q++) {
        int64_t o = w->keep[q];
        if (g->last >= 0 && w->to[g->last] == o) map_last = q;
        float *cb = cblock(g, q) + q % CB;
        for (int i = 0; i < d; i++) cb[(size_t)i * CB] = w->rows[o * d + i];
        g->cnorm[q] = g->cnorm[o];
        g->cl[q] = g->cl[o];
        double cn = sqrt(g->cnorm[q] > 0 ? (double)g->cnorm[q] : 0.0);
        if (cn > g->cmax) g->cmax = cn;
        if (g->use_index) {
            float *cp = g->cproj + (q / CB) * CB * NP + q % CB;
            const float *op = g->cproj + (o / CB) * CB * NP + o % CB;
            for (int p = 0; p < NP; p++) cp[p * CB] = op[p * CB];
            g->nnd[q] = w->nn[q];
        }
    }
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
    int64_t nc = g->nc;
    double D2 = D * D;
    merge_work w;
    int rc = KV_OK;
    *dmin = INFINITY;
    if (!work_init(&w, g)) {
        rc = kv_seterr(err, KV_EINTERNAL, "subgen: out of memory merging clusters");
        goto out;
    }
    for (int64_t c = 0; c < nc; c++) {
        double bd;
        int64_t best = nearest_kept(&w, c, d, D2, &bd);
        if (best >= 0 && bd <= D2)
            w.to[c] = w.keep[best];
        else
            keep_centre(&w, c, d);
    }
    for (int64_t q = 0; q < w.nk; q++) w.nn[q] = sqrt(w.nn[q]) * (1.0 - 1e-9); /* a little under the distance */
    *dmin = sqrt(w.dmin2) * (1.0 - 1e-9);
    for (int64_t c = 0; c < nc && !rc; c++)
        if (w.to[c] != c) rc = merge_reservoirs(g, w.to[c], c, err);
    if (!rc) compact(g, &w); /* on failure counts and keys stay consistent: merged pairs are whole */
out:
    work_free(&w);
    return rc;
}

/* k matched no centre and the rank is at its cap: double delta and merge
 * until k joins a centre (returned) or there is room for it (-1; then
 * g->dist holds k's scan against the centres left, as open_cluster needs).
 * The next radius is at least the least distance between kept centres or
 * from k to one, so every round after the first merges or lets k join: the
 * loop ends, and delta only grows by doubling over the stream (at most
 * log2(diameter / delta) rounds in all, each O(cap^2 d)). */
int64_t sg_make_room(subgen *g, const float *k, float kn, const float *pk, kv_err *err)
{
    double D = 2.0 * g->delta;
    for (;;) {
        double dk = INFINITY, dmin;
        for (int64_t j = 0; j < g->nc && !(D > 0); j++) { /* delta = 0: start at k's nearest centre */
            double x = sqrt(sg_dist2_centre(g, k, j));
            if (x < dk) dk = x;
        }
        if (!(D > 0)) D = dk;
        if (merge_at(g, D, &dmin, err)) break;
        g->delta = D;
        g->delta2 = D * D;
        g->doublings++;
        g->scanned = 0;
        int64_t c = sg_find_cluster(g, k, kn, pk, NULL, 0);
        if (c >= 0 || g->nc < g->cap) return c; /* -1 comes from a full scan: g->dist is k's */
        dk = INFINITY;
        for (int64_t j = 0; j < g->nc; j++) {
            double x = sqrt(sg_dist2_centre(g, k, j));
            if (x < dk) dk = x;
        }
        double next = dmin < dk ? dmin : dk;
        D = 2.0 * D > next ? 2.0 * D : next;
    }
    return -2;
}
