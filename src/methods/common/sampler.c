/* sampler.c - reservoir (Algorithm R) and streaming l2 samplers; see sampler.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "methods/common/sampler.h"

void kv_reservoir_init(kv_reservoir *r, int64_t t)
{
    r->n = 0;
    r->t = t;
}

int64_t kv_reservoir_offer(kv_reservoir *r, kv_rng *rng)
{
    r->n++;
    if (r->n <= r->t) return r->n - 1;
    /* keep with probability t/n, in a uniform slot */
    uint64_t j = kv_rng_below(rng, (uint64_t)r->n);
    return j < (uint64_t)r->t ? (int64_t)j : -1;
}

int kv_l2_init(kv_l2_sampler *ls, int s, kv_err *err)
{
    ls->s = s;
    ls->F = 0.0;
    ls->item = kv_malloc(sizeof(int64_t) * (size_t)s, err);
    ls->w = kv_calloc((size_t)s, sizeof(double), err);
    ls->thr = kv_calloc((size_t)s, sizeof(double), err);
    ls->heap = kv_malloc(sizeof(int) * (size_t)s, err);
    if (!ls->item || !ls->w || !ls->thr || !ls->heap) {
        kv_l2_clear(ls);
        return err->code;
    }
    /* thr = 0: the first positive weight is taken by every sampler */
    for (int j = 0; j < s; j++) {
        ls->item[j] = -1;
        ls->heap[j] = j;
    }
    return KV_OK;
}

void kv_l2_clear(kv_l2_sampler *ls)
{
    free(ls->item);
    free(ls->w);
    free(ls->thr);
    free(ls->heap);
    ls->item = NULL;
    ls->w = ls->thr = NULL;
    ls->heap = NULL;
    ls->s = 0;
    ls->F = 0.0;
}

/* heap order: threshold, then sampler id, so equal thresholds are
 * resolved the same way every run */
static int below(const kv_l2_sampler *ls, int a, int b)
{
    return ls->thr[a] < ls->thr[b] || (ls->thr[a] == ls->thr[b] && a < b);
}

static void sift_down(kv_l2_sampler *ls, int i)
{
    int *h = ls->heap, n = ls->s;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && below(ls, h[l], h[m])) m = l;
        if (r < n && below(ls, h[r], h[m])) m = r;
        if (m == i) return;
        int x = h[i];
        h[i] = h[m];
        h[m] = x;
        i = m;
    }
}

int kv_l2_offer(kv_l2_sampler *ls, kv_rng *rng, int64_t id, double w, int *take)
{
    if (!(w > 0.0) || !isfinite(w)) return 0;
    ls->F += w;
    int k = 0;
    while (ls->thr[ls->heap[0]] < ls->F) {
        int j = ls->heap[0];
        take[k++] = j;
        ls->item[j] = id;
        ls->w[j] = w;
        /* survive to total G with probability F/G: G = F / u, u in (0, 1] */
        double u = 1.0 - kv_rng_uniform(rng);
        ls->thr[j] = ls->F / u;
        sift_down(ls, 0);
    }
    return k;
}

size_t kv_l2_bytes(const kv_l2_sampler *ls)
{
    size_t per = sizeof(int64_t) + 2 * sizeof(double) + sizeof(int);
    return (size_t)ls->s * per + sizeof(double);
}

void kv_l2_save(const kv_l2_sampler *ls, kv_buf *out)
{
    size_t s = (size_t)ls->s;
    kv_buf_put_f64(out, ls->F);
    kv_buf_put_arr(out, ls->item, s * sizeof(int64_t));
    kv_buf_put_arr(out, ls->w, s * sizeof(double));
    kv_buf_put_arr(out, ls->thr, s * sizeof(double));
    kv_buf_put_arr(out, ls->heap, s * sizeof(int));
}

/* 1 if x (arrays of x->s) is a state kv_l2_offer can reach; seen: s bytes */
static int l2_valid(const kv_l2_sampler *x, int64_t max_id, unsigned char *seen)
{
    double F = x->F;
    if (!(F >= 0.0) || !isfinite(F)) return 0;
    for (int j = 0; j < x->s; j++) {
        if (F == 0.0) { /* nothing offered yet: as kv_l2_init left it */
            if (x->item[j] != -1 || x->w[j] != 0.0 || x->thr[j] != 0.0 || x->heap[j] != j) return 0;
        } else { /* every sampler took the first item; thresholds lie ahead */
            if (x->item[j] < 0 || x->item[j] >= max_id || !(x->w[j] > 0.0) || !(x->w[j] <= F) || !(x->thr[j] >= F))
                return 0;
        }
    }
    for (int p = 0; p < x->s; p++) {
        int j = x->heap[p];
        if (j < 0 || j >= x->s || seen[j]) return 0;
        seen[j] = 1;
        if (p && below(x, j, x->heap[(p - 1) / 2])) return 0;
    }
    return 1;
}

int kv_l2_load(kv_l2_sampler *ls, int s, kv_rd *in, int64_t max_id, kv_err *err)
{
    const char *what = in->what ? in->what : "a";
    size_t ni = 0, nw = 0, nt = 0, nh = 0;
    void *item = NULL, *w = NULL, *thr = NULL, *heap = NULL;
    unsigned char *seen = NULL;
    int rc = KV_OK;
    memset(ls, 0, sizeof *ls);
    ls->s = s;
    if (kv_rd_f64(in, &ls->F, err) || kv_rd_arr(in, &item, sizeof(int64_t), (size_t)s, &ni, err) ||
        kv_rd_arr(in, &w, sizeof(double), (size_t)s, &nw, err) ||
        kv_rd_arr(in, &thr, sizeof(double), (size_t)s, &nt, err) ||
        kv_rd_arr(in, &heap, sizeof(int), (size_t)s, &nh, err))
        rc = err->code;
    else if (s < 1 || ni != (size_t)s || nw != ni || nt != ni || nh != ni)
        rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state has l2 sampler arrays of the wrong length", what);
    else if (!(seen = calloc((size_t)s, 1)))
        rc = kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    ls->item = item;
    ls->w = w;
    ls->thr = thr;
    ls->heap = heap;
    if (!rc && !l2_valid(ls, max_id, seen))
        rc = kv_seterr(err, KV_EINPUT, "checkpoint: %s state has an inconsistent l2 sampler", what);
    free(seen);
    if (rc) kv_l2_clear(ls);
    return rc;
}
