/* save.c - SubGen's checkpoints (subgen.c has the overview): the state that
 * decides later results is saved and checked on load; the block layout,
 * the projected centres and the derived maxima are rebuilt bit for bit, so
 * a resumed run is bitwise the same as an uninterrupted one. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/subgen/state.h"

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
void sg_save(const void *state, kv_buf *out)
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
        centre_row(g, (int64_t)c, row);
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
            sg_project(t, k, pk);
            for (int p = 0; p < NP; p++) cp[p * CB] = pk[p];
            t->nnd[c] = nnd[c];
        }
    }
    return KV_OK;
}

/* What a checkpoint holds, read and checked before anything is built: the
 * header's scalars, the arrays (kv_rd_arr: pointer and row count), the l2
 * samplers; total and nres are derived from the counts. */
typedef struct {
    int64_t hist, last, buf_on, nval, total, nres, cap, doublings, ccap;
    double delta0, delta;
    kv_rng rng;
    void *C, *N, *cnt, *R, *nnd, *SK, *SV, *BK, *BV, *RV;
    size_t nc, nn, ncnt, nr, nnn, nsk, nsv, nbk, nbv, nrv;
    kv_l2_sampler l2;
} sg_ck;

static int ck_bad(kv_err *err, const char *what)
{
    return kv_seterr(err, KV_EINPUT, "checkpoint: subgen state %s", what);
}

static void ck_free(sg_ck *k)
{
    free(k->C); free(k->N); free(k->cnt); free(k->R); free(k->RV); free(k->nnd);
    free(k->SK); free(k->SV); free(k->BK); free(k->BV);
    kv_l2_clear(&k->l2);
}

/* magic, the spec's scalars (must be this state's), delta and the
 * doublings, the cluster capacity, generator, scan history, last cluster */
static int ck_header(const subgen *g, kv_rd *in, sg_ck *k, kv_err *err)
{
    int64_t hdr[6];
    for (int i = 0; i < 6; i++) {
        if (kv_rd_i64(in, &hdr[i], err)) return err->code;
        if (i == 0 && hdr[0] == SG_MAGIC2)
            return ck_bad(err, "is in the older format vsubgen2 (before joint=): rerun without --resume");
    }
    if (kv_rd_f64(in, &k->delta0, err) || kv_rd_i64(in, &k->cap, err) || kv_rd_f64(in, &k->delta, err) ||
        kv_rd_i64(in, &k->doublings, err) || kv_rd_i64(in, &k->ccap, err) ||
        kv_rd_get(in, k->rng.s, sizeof k->rng.s, err) || kv_rd_i64(in, &k->hist, err) ||
        kv_rd_i64(in, &k->last, err))
        return err->code;
    if (hdr[0] != SG_MAGIC || hdr[1] != g->ctx.d || hdr[2] != g->ctx.dv || hdr[3] != g->t || hdr[4] != g->s ||
        hdr[5] != g->use_index || memcmp(&k->delta0, &g->delta0, sizeof k->delta) || k->cap != g->cap)
        return ck_bad(err, "was saved with another spec, d, dv or rank count");
    /* delta only grows from the spec's, at least doubling per round (after a
     * first round from 0): a finite double allows some 2100 rounds in all */
    if (!(k->delta >= k->delta0) || !isfinite(k->delta) || k->doublings < 0 || k->doublings > 2200 ||
        (k->doublings == 0) != (k->delta == k->delta0))
        return ck_bad(err, "has a bad doubled delta");
    if (!(k->rng.s[0] | k->rng.s[1] | k->rng.s[2] | k->rng.s[3])) return ck_bad(err, "has a zero generator state");
    if (k->hist < 0 || k->hist > 0xff) return ck_bad(err, "has a bad scan history");
    return KV_OK;
}

/* clusters: centres, |c|^2, counts, reservoir keys, index bounds */
static int ck_clusters(const subgen *g, kv_rd *in, sg_ck *k, kv_err *err)
{
    int d = g->ctx.d;
    int64_t lim = kv_shard_limit(&g->ctx);
    size_t mx = (size_t)(lim > 0 ? lim : 0);
    if (kv_rd_arr(in, &k->C, sizeof(float) * (size_t)d, mx, &k->nc, err) ||
        kv_rd_arr(in, &k->N, sizeof(float), mx, &k->nn, err) ||
        kv_rd_arr(in, &k->cnt, sizeof(int64_t), mx, &k->ncnt, err) ||
        kv_rd_arr(in, &k->R, sizeof(float) * (size_t)d, mx, &k->nr, err) ||
        kv_rd_arr(in, &k->nnd, sizeof(double), mx, &k->nnn, err))
        return err->code;
    size_t nc = k->nc;
    if (k->nn != nc || k->ncnt != nc || k->nnn != (g->use_index ? nc : 0))
        return ck_bad(err, "has cluster arrays of different lengths");
    for (size_t c = 0; c < nc; c++) {
        int64_t n = ((int64_t *)k->cnt)[c];
        float cn = ((float *)k->N)[c];
        if (n < 1 || n > lim - k->total) return ck_bad(err, "has cluster counts beyond the rank's tokens");
        k->total += n;
        k->nres += n < g->t ? n : g->t;
        if (!(cn >= 0.0f) || !isfinite(cn)) return ck_bad(err, "has a bad centre norm");
        if (k->nnn && !(((double *)k->nnd)[c] >= 0.0)) return ck_bad(err, "has a bad index bound");
    }
    if ((int64_t)k->nr != k->nres) return ck_bad(err, "has reservoir keys that do not match the cluster counts");
    if ((int64_t)nc > g->cap || (k->ccap ? k->ccap < (int64_t)nc || k->ccap != sg_ccap_for(g, k->ccap) : nc != 0))
        return ck_bad(err, "has more clusters than its cap or a bad cluster capacity");
    if (nc ? (k->last < 0 || k->last >= (int64_t)nc) : k->last != -1)
        return ck_bad(err, "has a bad last cluster index");
    if (!kv_all_finite(k->C, nc * (size_t)d) || !kv_all_finite(k->R, k->nr * (size_t)d))
        return ck_bad(err, "has a key that is not finite");
    return KV_OK;
}

/* l2 samplers and their pairs (not with joint), the exact buffer, the
 * reservoirs' values (joint only) */
static int ck_samples(const subgen *g, kv_rd *in, sg_ck *k, kv_err *err)
{
    int d = g->ctx.d, dv = g->ctx.dv;
    int64_t lim = kv_shard_limit(&g->ctx);
    size_t mx = (size_t)(lim > 0 ? lim : 0), s = (size_t)g->s;
    if (!g->joint && (kv_l2_load(&k->l2, g->s, in, g->ctx.n_total, err) ||
                      kv_rd_arr(in, &k->SK, sizeof(float) * (size_t)d, s, &k->nsk, err) ||
                      kv_rd_arr(in, &k->SV, sizeof(float) * (size_t)dv, s, &k->nsv, err)))
        return err->code;
    if (kv_rd_i64(in, &k->buf_on, err) || kv_rd_i64(in, &k->nval, err) ||
        kv_rd_arr(in, &k->BK, sizeof(float) * (size_t)d, s, &k->nbk, err) ||
        kv_rd_arr(in, &k->BV, sizeof(float) * (size_t)dv, s, &k->nbv, err) ||
        kv_rd_arr(in, &k->RV, sizeof(float) * (size_t)dv, mx, &k->nrv, err))
        return err->code;
    size_t held = k->l2.F > 0.0 ? s : 0;
    if (k->nsk != held || k->nsv != held) return ck_bad(err, "has l2 samples that do not match its samplers");
    if (k->nval < 0 || k->nval > k->total || (k->nval > 0) != (k->l2.F > 0.0) ||
        k->buf_on != (!g->joint && k->nval <= g->s) || k->nbk != (k->buf_on ? (size_t)k->nval : 0) ||
        k->nbv != k->nbk)
        return ck_bad(err, "has an inconsistent exact buffer");
    if ((int64_t)k->nrv != (g->joint ? k->nres : 0))
        return ck_bad(err, "has reservoir values that do not match its keys");
    if (!kv_all_finite(k->SK, k->nsk * (size_t)d) || !kv_all_finite(k->SV, k->nsv * (size_t)dv) ||
        !kv_all_finite(k->BK, k->nbk * (size_t)d) || !kv_all_finite(k->BV, k->nbv * (size_t)dv) ||
        !kv_all_finite(k->RV, k->nrv * (size_t)dv))
        return ck_bad(err, "has a key or value that is not finite");
    return KV_OK;
}

/* The rest of the restored state t (clusters built): delta, generator,
 * samples and the exact buffer, grown to the capacity value_token would
 * have (its arrays move from k to t). */
static int ck_install(const subgen *g, subgen *t, sg_ck *k, kv_err *err)
{
    int d = g->ctx.d, dv = g->ctx.dv;
    size_t held = k->l2.F > 0.0 ? (size_t)g->s : 0;
    t->delta = k->delta;
    t->delta2 = k->delta * k->delta;
    t->doublings = k->doublings;
    t->bcap = k->nbk ? sg_bcap_for(g, (int64_t)k->nbk) : 0; /* as value_token grows it */
    if (k->nbk) {
        void *bk = realloc(k->BK, sizeof(float) * (size_t)(t->bcap * d));
        if (bk) k->BK = bk;
        void *bv = bk ? realloc(k->BV, sizeof(float) * (size_t)(t->bcap * dv)) : NULL;
        if (bv) k->BV = bv;
        if (!bk || !bv)
            return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring the subgen exact buffer");
    }
    t->rng = k->rng;
    t->hist = (unsigned)k->hist;
    t->last = k->last;
    t->l2 = k->l2;
    k->l2 = (kv_l2_sampler){ 0 };
    if (held) {
        memcpy(t->sk, k->SK, sizeof(float) * held * (size_t)d); /* t->sk is g->sk */
        memcpy(t->sv, k->SV, sizeof(float) * held * (size_t)dv);
    }
    t->buf_on = (int)k->buf_on;
    t->nval = k->nval;
    t->nbuf = (int64_t)k->nbk;
    t->bk = k->BK;
    t->bv = k->BV;
    k->BK = k->BV = NULL;
    return KV_OK;
}

/* Restore what sg_save wrote into a state fresh from subgen_create (same
 * spec and ctx).  Everything is read and checked before anything is built;
 * the state is only changed on success. */
int sg_load(void *state, kv_rd *in, kv_err *err)
{
    subgen *g = state;
    sg_ck k = { 0 };
    subgen t = *g; /* the restored state, built aside */
    t.nc = t.ccap = t.pre_cap = t.nres = 0;
    t.cent = t.cnorm = t.dist = t.cproj = t.pre = NULL;
    t.cl = NULL;
    t.nnd = NULL;
    t.cmax = 0.0;
    if (ck_header(g, in, &k, err) || ck_clusters(g, in, &k, err) || ck_samples(g, in, &k, err) ||
        build_clusters(&t, k.C, k.N, k.cnt, k.R, k.RV, k.nnd, (int64_t)k.nc, k.ccap, err) ||
        ck_install(g, &t, &k, err)) {
        sg_free_clusters(&t);
        ck_free(&k);
        return err->code;
    }
    sg_free_clusters(g);
    kv_l2_clear(&g->l2);
    free(g->bk);
    free(g->bv);
    *g = t;
    ck_free(&k);
    return KV_OK;
}
