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

typedef struct { double score; int64_t idx; int64_t at; } cand;

static int cand_cmp(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Drop the `go` lowest (score, index) among the held tokens whose list
 * place passes `is_cand`, keeping the list in index order. */
static void drop_lowest(evref *h, const double *key, const char *is_cand, int64_t go)
{
    if (go <= 0) return;
    cand *c = malloc(sizeof(cand) * (size_t)(h->n + 1));
    int64_t nc = 0;
    for (int64_t i = 0; i < h->n; i++)
        if (is_cand[i]) c[nc++] = (cand){ key[i], h->idx[i], i };
    qsort(c, (size_t)nc, sizeof *c, cand_cmp);
    char *gone = calloc((size_t)h->n + 1, 1);
    for (int64_t i = 0; i < go && i < nc; i++) gone[c[i].at] = 1;
    int64_t w = 0;
    for (int64_t i = 0; i < h->n; i++)
        if (!gone[i]) {
            h->idx[w] = h->idx[i];
            h->score[w++] = h->score[i];
        }
    h->n = w;
    free(c);
    free(gone);
}

static void snap_compress(evref *h, int64_t x)
{
    int64_t n = h->n, half = h->kern / 2, keep = h->B - h->T;
    double *vote = calloc((size_t)n + 1, sizeof(double)), *pooled = calloc((size_t)n + 1, sizeof(double));
    char *isc = calloc((size_t)n + 1, 1);
    int64_t prot = 0;
    for (int64_t i = 0; i < n; i++) {
        isc[i] = h->idx[i] < x - h->W;
        prot += !isc[i];
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
    drop_lowest(h, pooled, isc, n - keep);
    (void)prot;
    free(vote);
    free(pooled);
    free(isc);
}

/* Decision point x: arrivals < x, then the rule. */
static void decide(evref *h, int64_t x, int at_query)
{
    if (x <= h->xlast || (!at_query && x % h->E)) return;
    for (; h->fed < x; h->fed++) {
        double sc = 0;
        if (h->kind == EVREF_TOVA)
            for (int64_t j = 0; j < h->nrows; j++) sc += weight(h, j, h->fed) / (double)h->nrows;
        h->idx[h->n] = h->fed;
        h->score[h->n++] = sc;
    }
    h->xlast = x;
    char *isc = calloc((size_t)h->n + 1, 1);
    int64_t nc = 0;
    for (int64_t i = 0; i < h->n; i++) nc += isc[i] = h->kind != EVREF_H2O || h->idx[i] < x - h->R;
    if (h->kind == EVREF_H2O) drop_lowest(h, h->score, isc, nc - (h->B - h->R));
    if (h->kind == EVREF_TOVA) drop_lowest(h, h->score, isc, h->n - h->B);
    if (h->kind == EVREF_SNAPKV && h->n > h->B) snap_compress(h, x);
    free(isc);
}

void evref_query(evref *h, const float *Q, int nq, int64_t p, double *st)
{
    size_t sl = KV_PSTATE_LEN(h->dv);
    for (int64_t x = (h->xlast / h->E + 1) * h->E; x < p; x += h->E) decide(h, x, 0);
    decide(h, p, 1);
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
