/* quest_fold.c - Quest's fold over the selected pages (quest_fold.h):
 * the pages taken by a query, their rows' logits (each bitwise
 * kv_dot_fixed), then the softmax sums in the same order, with the rows
 * prefetched ahead since the pages read are scattered. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "methods/quest/quest_fold.h"

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return KV_OK;
    void *x = realloc(*p, size * need);
    if (!x) return KV_EINTERNAL;
    *p = x;
    *cap = need;
    return KV_OK;
}

/* The pages of query q (prefix p) with key >= thr, ascending, into w->pg;
 * their count.  From select's list when it holds every such page (the
 * largest key left out is below thr), else every key again. */
static int pages_taken(const quest_state *s, const float *q, int64_t p, double thr, const pcand *cl, int64_t cn,
                       double out, kv_quest_scratch *w, size_t *ns)
{
    size_t n = quest_pages_below(s, p), k = 0;
    if (cl && cn >= 0 && (size_t)cn <= n && ((size_t)cn == n || out < thr)) {
        /* the list's pages >= thr in page order: marked, then read in order */
        size_t nw = (n + 63) / 64;
        if (grow((void **)&w->pg, &w->npg, (size_t)cn + 1, sizeof(pcand)) ||
            grow((void **)&w->bit, &w->nbit, nw + 1, sizeof(uint64_t)))
            return KV_EINTERNAL;
        memset(w->bit, 0, sizeof(uint64_t) * nw);
        for (int64_t i = 0; i < cn; i++)
            if (cl[i].key >= thr) w->bit[cl[i].j / 64] |= UINT64_C(1) << (cl[i].j % 64);
        for (size_t x = 0; x < nw; x++)
            for (uint64_t b = w->bit[x]; b; b &= b - 1) {
                size_t j = x * 64 + (size_t)__builtin_ctzll(b);
                w->pg[k++] = (pcand){ 0, (int64_t)j };
            }
        *ns = k;
        return KV_OK;
    }
    if (grow((void **)&w->pg, &w->npg, n + 1, sizeof(pcand))) return KV_EINTERNAL;
    size_t off[s->ctx.d > 0 ? s->ctx.d : 1];
    kv_quest_bound_offsets(s->ctx.d, q, off);
    for (size_t t = 0; t * PT < n; t++) {
        double key[PT];
        kv_quest_tile_keys(s, t, n, q, off, p, key);
        for (size_t i = 0; i < PT && t * PT + i < n; i++)
            if (key[i] >= thr) w->pg[k++] = (pcand){ key[i], (int64_t)(t * PT + i) };
    }
    *ns = k;
    return KV_OK;
}

#define AHEAD 64 /* rows prefetched ahead of the fold: the pages read are scattered */

/* A cursor over the rows of the pages taken (w->pg[0..ns), rows < p) that
 * asks for one row of X (w floats) at a time into L2: spread over the fold,
 * as exact's kernel does (a burst per page stalls on the fill buffers). */
typedef struct { size_t i; int64_t t; } rowcur;

static void prefetch_next(const quest_state *s, const pcand *pg, size_t ns, int64_t p, rowcur *c, const float *X, int w)
{
    while (c->i < ns) {
        size_t j = (size_t)pg[c->i].j;
        if (c->t < quest_rows_below(s, j, p)) {
            const char *b = (const char *)(X + (size_t)(s->pt[j].row + c->t) * w);
            for (size_t o = 0; o < sizeof(float) * (size_t)w; o += 64) __builtin_prefetch(b + o, 0, 2);
            c->t++;
            return;
        }
        c->i++;
        c->t = 0;
    }
}

/* One query: fold this rank's pages with key >= thr, their rows < p; c
 * gets what it read.  Each selected row's logit is computed once (8 rows
 * at a time, each bitwise kv_dot_fixed): the logits wait in a scratch for
 * the max, then the sums; 0 or KV_EINTERNAL. */
int kv_quest_fold_one(const quest_state *s, const float *q, int64_t p, double thr, const pcand *cl, int64_t cn,
                    double out, double *st, kv_query_cost *c, kv_quest_scratch *w)
{
    int d = s->ctx.d, dv = s->ctx.dv;
    size_t n = quest_pages_below(s, p), na = 0, ns = 0;
    double m = -INFINITY, l = 0, l2 = 0, *u = st + KV_PS_U, tok = 0;
    float scale = (float)s->ctx.scale;
    kv_partial_clear(st, dv);
    if (pages_taken(s, q, p, thr, cl, cn, out, w, &ns)) return KV_EINTERNAL;
    for (size_t i = 0; i < ns; i++) tok += (double)quest_rows_below(s, (size_t)w->pg[i].j, p);
    if (grow((void **)&w->a, &w->na, (size_t)tok + KV_DOT_BLK, sizeof(double))) return KV_EINTERNAL;
    double *a = w->a;
    rowcur pc = { 0, 0 };
    for (int i = 0; i < AHEAD; i++) prefetch_next(s, w->pg, ns, p, &pc, s->K, d);
    for (size_t i = 0; i < ns; i++) { /* the logits and their max */
        int64_t r0 = s->pt[w->pg[i].j].row, r = quest_rows_below(s, (size_t)w->pg[i].j, p);
        for (int64_t t = 0; t < r; t += KV_DOT_BLK) {
            int nt = r - t < KV_DOT_BLK ? (int)(r - t) : KV_DOT_BLK;
            const float *ptr[KV_DOT_BLK];
            float lg[KV_DOT_BLK];
            for (int x = 0; x < nt; x++) {
                ptr[x] = s->K + (size_t)(r0 + t + x) * d;
                prefetch_next(s, w->pg, ns, p, &pc, s->K, d);
            }
            kv_dot_fixed_rows(q, 1, d, ptr, nt, lg);
            for (int x = 0; x < nt; x++) {
                a[na] = (double)(lg[x] * scale);
                m = a[na] > m ? a[na] : m;
                na++;
            }
        }
    }
    na = 0;
    pc = (rowcur){ 0, 0 };
    for (int i = 0; i < AHEAD; i++) prefetch_next(s, w->pg, ns, p, &pc, s->V, dv);
    for (size_t i = 0; i < ns; i++) { /* the sums, in the same order */
        int64_t r0 = s->pt[w->pg[i].j].row, r = quest_rows_below(s, (size_t)w->pg[i].j, p);
        for (int64_t t = r0; t < r0 + r; t++) {
            prefetch_next(s, w->pg, ns, p, &pc, s->V, dv);
            double e = exp(a[na++] - m);
            const float *v = s->V + (size_t)t * dv;
            l += e;
            l2 += e * e;
            for (int x = 0; x < dv; x++) u[x] += e * v[x];
        }
    }
    if (m > -INFINITY) {
        st[KV_PS_M] = m;
        st[KV_PS_L] = l;
        st[KV_PS_L2] = l2;
    }
    /* every bound below p scanned; the rows read */
    double nb = (double)n;
    c->read_bytes = nb * 2.0 * d * sizeof(float) + tok * (double)(d + dv) * sizeof(float);
    c->read_tokens = nb * 2.0 * d / (double)(d + dv) + tok;
    c->flops = nb * 3.0 * d + tok * 2.0 * (d + dv);
    return KV_OK;
}

