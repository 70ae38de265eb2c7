/* ingest.c - SubGen's per-token update (subgen.c has the overview): the
 * key's cluster (index.c; kcentre.c at the cap), its reservoir, and with the
 * paper's estimator the l2 samplers and the exact buffer of values.  Keys
 * are scanned ahead in batches of GK when most tokens need a scan. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/subgen/state.h"

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
    double w = kv_norm2_f64(v, dv);
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
                int64_t nc = sg_bcap_for(g, g->nbuf + 1);
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
        kn[q] = kv_dot16(ks[q], ks[q], d);
        rows[q] = g->pre + (size_t)q * g->pre_cap;
    }
    sg_scan_from(g, ks, kn, nk, 0, rows);
}

int sg_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
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
        float kn = kv_dot16(k, k, d);
        if (g->use_index) sg_project(g, k, pk);
        g->scanned = 0;
        int64_t c = sg_find_cluster(g, k, kn, pk, pre, pre_nc), layout = g->layout;
        g->hist = ((g->hist << 1) | (unsigned)g->scanned) & 0xffu;
        if (c < 0 && g->nc >= g->cap && (c = sg_make_room(g, k, kn, pk, err)) < -1) return err->code;
        if (c < 0) {
            if (sg_open_cluster(g, k, kn, pk, err)) return err->code;
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
