/* evref.c - brute-force sequential evictors (see evref.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "evref.h"
#include "kernels/dot.h"
#include "kernels/partial.h"

void evref_init(evref *h, evref_kind kind, int d, int dv, const float *K, const float *V, int64_t nmax)
{
    memset(h, 0, sizeof *h);
    h->kind = kind;
    h->d = d;
    h->dv = dv;
    h->K = K;
    h->V = V;
    h->scale = (float)(1.0 / sqrt((double)d));
    h->E = 16;
    h->idx = malloc(sizeof(int64_t) * (size_t)(nmax + 1));
    h->score = malloc(sizeof(double) * (size_t)(nmax + 1));
    h->rq = malloc(sizeof(float) * (size_t)d * 4096);
    h->rp = malloc(sizeof(int64_t) * 4096);
    h->rml = malloc(sizeof(double) * 2 * 4096);
}

void evref_free(evref *h)
{
    free(h->idx);
    free(h->score);
    free(h->rq);
    free(h->rp);
    free(h->rml);
}

static double logit(const evref *h, const float *q, int64_t t)
{
    return (double)(kv_dot_fixed(q, h->K + t * h->d, h->d) * h->scale);
}

/* weight of token t under buffered row j */
static double weight(const evref *h, int64_t j, int64_t t)
{
    double m = h->rml[2 * j], l = h->rml[2 * j + 1];
    return l > 0 ? exp(logit(h, h->rq + j * h->d, t) - m) / l : 0;
}

typedef struct { double score, idx; int k; int64_t at; } cand;

static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Each stream's keys (score) of its candidates (is_cand) at point x:
 * h2o the accumulated scores of the tokens below x - R, tova every token's
 * last weight, snapkv the pooled votes of the tokens outside the window. */
static void snap_keys(const evref *h, int64_t x, double *pooled, char *isc)
{
    int64_t n = h->n, half = h->kern / 2;
    double *vote = calloc((size_t)n + 1, sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        isc[i] = h->idx[i] < x - h->W;
        for (int64_t j = 0; j < h->nrows && isc[i]; j++)
            if (h->rp[j] > h->idx[i]) vote[i] += weight(h, j, h->idx[i]);
    }
    for (int64_t i = 0; i < n; i++) { /* neighbours in index order */
        double sum = 0, best = 0;
        for (int64_t j = 0; j < n; j++)
            if (isc[j] && llabs(h->idx[j] - h->idx[i]) <= half) {
                sum += vote[j];
                best = vote[j] > best ? vote[j] : best;
            }
        pooled[i] = h->maxpool ? best : sum / (double)h->kern;
    }
    free(vote);
}

/* Arrivals < x of one stream (tova scores them under the last rows). */
static void arrive(evref *h, int64_t x)
{
    for (; h->fed < x; h->fed++) {
        double sc = 0;
        if (h->kind == EVREF_TOVA)
            for (int64_t j = 0; j < h->nrows; j++) sc += weight(h, j, h->fed) / (double)h->nrows;
        h->idx[h->n] = h->fed;
        h->score[h->n++] = sc;
    }
    h->xlast = x;
}

/* Decision point x of a group of ns streams sharing B = h[0].B (h2o: the
 * heavy pool B - ns R; snapkv: compress to B - T once the total exceeds
 * B): arrivals, then the `go` lowest (score, index ns + stream) among all
 * the streams' candidates are dropped, each list kept in index order. */
static void decide(evref *h, int ns, int64_t x, int at_query)
{
    if (x <= h[0].xlast || (!at_query && x % h[0].E)) return;
    int64_t tot = 0, nc = 0, held = 0;
    for (int k = 0; k < ns; k++) arrive(&h[k], x), tot += h[k].n;
    cand *c = malloc(sizeof(cand) * (size_t)(tot + 1));
    double **key = malloc(sizeof(double *) * (size_t)ns);
    char **isc = malloc(sizeof(char *) * (size_t)ns);
    for (int k = 0; k < ns; k++) {
        evref *s = &h[k];
        key[k] = malloc(sizeof(double) * (size_t)(s->n + 1));
        isc[k] = calloc((size_t)s->n + 1, 1);
        if (s->kind == EVREF_SNAPKV) snap_keys(s, x, key[k], isc[k]);
        for (int64_t i = 0; i < s->n; i++) {
            if (s->kind != EVREF_SNAPKV) key[k][i] = s->score[i], isc[k][i] = s->kind != EVREF_H2O || s->idx[i] < x - s->R;
            if (isc[k][i]) c[nc++] = (cand){ key[k][i], (double)s->idx[i] * ns + k, k, i };
        }
        held += s->n;
    }
    int64_t go = h[0].kind == EVREF_H2O ? nc - (h[0].B - ns * h[0].R)
                 : h[0].kind == EVREF_TOVA ? held - h[0].B
                 : held > h[0].B ? held - (h[0].B - h[0].T) : 0;
    qsort(c, (size_t)nc, sizeof *c, cand_cmp);
    /* AdaKV's floor: each stream keeps f of the nc - go candidates kept */
    int64_t K = nc - go, f = ns > 1 && K > 0 && h[0].alpha > 0 ? (int64_t)(h[0].alpha * (double)K / (double)ns) : 0;
    int64_t *left = calloc((size_t)ns, sizeof(int64_t));
    for (int64_t i = 0; i < nc; i++) left[c[i].k]++;
    for (int64_t i = 0, taken = 0; taken < go && i < nc; i++)
        if (left[c[i].k] > f) {
            isc[c[i].k][c[i].at] = 2; /* gone */
            left[c[i].k]--;
            taken++;
        }
    free(left);
    for (int k = 0; k < ns; k++) {
        evref *s = &h[k];
        int64_t w = 0;
        for (int64_t i = 0; i < s->n; i++)
            if (isc[k][i] != 2) {
                s->idx[w] = s->idx[i];
                s->score[w++] = s->score[i];
            }
        s->n = w;
        free(key[k]);
        free(isc[k]);
    }
    free(key);
    free(isc);
    free(c);
}

/* One stream's answers at p from its held list, then its scores and rows. */
static void answer(evref *h, const float *Q, int nq, int64_t p, double *st)
{
    size_t sl = KV_PSTATE_LEN(h->dv);
    double *m = malloc(sizeof(double) * (size_t)nq), *l = malloc(sizeof(double) * (size_t)nq);
    for (int q = 0; q < nq; q++) {
        kv_partial_clear(st + q * sl, h->dv);
        m[q] = -INFINITY;
        l[q] = 0;
        for (int64_t i = 0; i < h->n; i++) {
            double a = logit(h, Q + q * h->d, h->idx[i]);
            kv_partial_add_one(st + q * sl, h->dv, a, 1.0, h->V + h->idx[i] * h->dv);
            m[q] = a > m[q] ? a : m[q];
        }
        for (int64_t i = 0; i < h->n; i++) l[q] += exp(logit(h, Q + q * h->d, h->idx[i]) - m[q]);
    }
    if (h->kind == EVREF_TOVA || h->kind == EVREF_SNAPKV) {
        if (h->kind == EVREF_TOVA) h->nrows = 0;
        for (int q = 0; q < nq; q++, h->nrows++) {
            memcpy(h->rq + h->nrows * h->d, Q + q * h->d, sizeof(float) * (size_t)h->d);
            h->rp[h->nrows] = p;
            h->rml[2 * h->nrows] = m[q];
            h->rml[2 * h->nrows + 1] = l[q];
        }
    }
    if (h->kind == EVREF_SNAPKV) { /* the last W positions stay */
        int64_t npos = 0, k = 0;
        for (int64_t j = 0; j < h->nrows; j++) npos += j == 0 || h->rp[j] != h->rp[j - 1];
        if (npos > h->W) {
            while (k < h->nrows && h->rp[k] == h->rp[0]) k++;
            memmove(h->rq, h->rq + k * h->d, sizeof(float) * (size_t)((h->nrows - k) * h->d));
            memmove(h->rp, h->rp + k, sizeof(int64_t) * (size_t)(h->nrows - k));
            memmove(h->rml, h->rml + 2 * k, sizeof(double) * (size_t)(2 * (h->nrows - k)));
            h->nrows -= k;
        }
    }
    for (int64_t i = 0; i < h->n; i++) {
        double w = 0;
        for (int q = 0; q < nq; q++)
            if (l[q] > 0) w += exp(logit(h, Q + q * h->d, h->idx[i]) - m[q]) / l[q];
        if (h->kind == EVREF_H2O) h->score[i] += w;
        if (h->kind == EVREF_TOVA) h->score[i] = w / nq;
    }
    free(m);
    free(l);
}

void evref_group_query(evref *h, int ns, const float *Q, int nq, int64_t p, double *st)
{
    for (int64_t x = (h[0].xlast / h[0].E + 1) * h[0].E; x < p; x += h[0].E) decide(h, ns, x, 0);
    decide(h, ns, p, 1);
    for (int k = 0; k < ns; k++)
        answer(&h[k], Q + (size_t)k * nq * h[k].d, nq, p, st + (size_t)k * nq * KV_PSTATE_LEN(h[k].dv));
}

void evref_query(evref *h, const float *Q, int nq, int64_t p, double *st)
{
    evref_group_query(h, 1, Q, nq, p, st);
}
