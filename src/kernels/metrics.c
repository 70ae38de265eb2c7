/* metrics.c - relative error, operator norm, summary statistics. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/metrics.h"

double kv_l2_dist(const double *a, const double *b, int dv)
{
    double s = 0;
    for (int c = 0; c < dv; c++) s += (a[c] - b[c]) * (a[c] - b[c]);
    return sqrt(s);
}

double kv_rel_error(const double *z, const double *ref, int dv)
{
    double num = kv_l2_dist(z, ref, dv), den = 0;
    for (int c = 0; c < dv; c++) den += ref[c] * ref[c];
    den = sqrt(den);
    return den > 0 ? num / den : num;
}

double kv_opnorm_from_gram(const double *G, int dv, double *vec, double *work)
{
    double nv = 0;
    for (int i = 0; i < dv; i++) nv += vec[i] * vec[i];
    if (!(nv > 0)) {
        for (int i = 0; i < dv; i++) vec[i] = 1.0 + 0.01 * i; /* generic start */
        nv = 0;
        for (int i = 0; i < dv; i++) nv += vec[i] * vec[i];
    }
    nv = sqrt(nv);
    for (int i = 0; i < dv; i++) vec[i] /= nv;
    double lam = 0;
    for (int it = 0; it < 1000; it++) {
        for (int i = 0; i < dv; i++) {
            double s = 0;
            const double *row = G + (size_t)i * dv;
            for (int j = 0; j < dv; j++) s += row[j] * vec[j];
            work[i] = s;
        }
        double nw = 0;
        for (int i = 0; i < dv; i++) nw += work[i] * work[i];
        nw = sqrt(nw);
        if (!(nw > 0)) return 0.0; /* G = 0 */
        for (int i = 0; i < dv; i++) vec[i] = work[i] / nw;
        if (fabs(nw - lam) <= 1e-9 * nw) { lam = nw; break; }
        lam = nw;
    }
    return sqrt(lam);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double quantile(const double *s, size_t n, double q)
{
    /* nearest rank: the smallest value with at least q of the data <= it */
    size_t k = (size_t)ceil(q * (double)n);
    if (k < 1) k = 1;
    return s[k - 1];
}

kv_summary kv_summarize(const double *x, size_t n)
{
    kv_summary r = { NAN, NAN, NAN, NAN, NAN, 0 };
    double *s = malloc(sizeof(double) * (n ? n : 1));
    if (!s) return r;
    size_t k = 0;
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        if (!isnan(x[i])) { s[k++] = x[i]; sum += x[i]; }
    if (k) {
        qsort(s, k, sizeof(double), cmp_double);
        r.mean = sum / (double)k;
        r.p50 = quantile(s, k, 0.50);
        r.p95 = quantile(s, k, 0.95);
        r.p99 = quantile(s, k, 0.99);
        r.max = s[k - 1];
        r.count = k;
    }
    free(s);
    return r;
}
