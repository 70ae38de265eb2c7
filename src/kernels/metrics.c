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

/* Number of eigenvalues of the tridiagonal T (a[0..m), b[0..m-1)) below x:
 * the negative pivots of the LDL^T factorisation of T - xI (Sturm). */
static int sturm_below(const double *a, const double *b, int m, double x)
{
    int neg = 0;
    double d = 1;
    for (int i = 0; i < m; i++) {
        d = a[i] - x - (i ? b[i - 1] * b[i - 1] / d : 0.0);
        if (d == 0) d = -1e-300; /* x is an eigenvalue: count it below */
        neg += d < 0;
    }
    return neg;
}

/* Largest eigenvalue of T by bisection on [0, Gershgorin bound]. */
static double tri_top(const double *a, const double *b, int m)
{
    double hi = 0;
    for (int i = 0; i < m; i++) {
        double r = a[i] + (i ? fabs(b[i - 1]) : 0) + (i + 1 < m ? fabs(b[i]) : 0);
        hi = r > hi ? r : hi;
    }
    double lo = 0;
    for (int it = 0; it < 200 && hi - lo > 1e-15 * hi; it++) {
        double mid = 0.5 * (lo + hi);
        if (sturm_below(a, b, m, mid) == m) hi = mid; /* all below mid */
        else lo = mid;
    }
    return hi;
}

/* Eigenvector of T for its eigenvalue th, by two steps of inverse iteration
 * (Thomas algorithm on T - th(1 + 1e-12) I), normalised, into y. */
static void tri_vec(const double *a, const double *b, int m, double th, double *y, double *c)
{
    double sh = th * (1 + 1e-12) + 1e-300;
    for (int i = 0; i < m; i++) y[i] = 1.0;
    for (int rep = 0; rep < 2; rep++) {
        double den = a[0] - sh;
        for (int i = 0; i < m; i++) { /* forward sweep: c = modified super-diagonal */
            if (i) den = a[i] - sh - b[i - 1] * c[i - 1];
            if (den == 0) den = 1e-300;
            c[i] = i + 1 < m ? b[i] / den : 0;
            y[i] = (y[i] - (i ? b[i - 1] * y[i - 1] : 0)) / den;
        }
        for (int i = m - 2; i >= 0; i--) y[i] -= c[i] * y[i + 1];
        double n = 0;
        for (int i = 0; i < m; i++) n += y[i] * y[i];
        n = sqrt(n);
        for (int i = 0; i < m; i++) y[i] /= n > 0 ? n : 1;
    }
}

double kv_opnorm_from_gram(const double *G, int dv, double *vec, double *work)
{
    /* Lanczos with full reorthogonalisation: the top eigenvalue of the
     * Krylov space's tridiagonal T converges in tens of steps even when the
     * top of the spectrum is nearly degenerate (V^T V of noise-like values),
     * where power iteration needed hundreds; after dv steps it is exact. */
    double *Q = work, *w = Q + (size_t)dv * dv, *a = w + dv, *b = a + dv, *y = b + dv, *c = y + dv;
    double nv = 0;
    for (int i = 0; i < dv; i++) {
        Q[i] = vec[i] + 1.0 + 0.01 * i; /* warm start plus a generic part: never orthogonal to the top */
        nv += Q[i] * Q[i];
    }
    nv = sqrt(nv);
    for (int i = 0; i < dv; i++) Q[i] /= nv;
    double th = 0, prev = -1;
    int m = 0;
    for (int k = 0; k < dv; k++) {
        const double *q = Q + (size_t)k * dv;
        for (int i = 0; i < dv; i++) {
            double s = 0;
            const double *row = G + (size_t)i * dv;
            for (int j = 0; j < dv; j++) s += row[j] * q[j];
            w[i] = s;
        }
        double al = 0;
        for (int i = 0; i < dv; i++) al += q[i] * w[i];
        a[k] = al;
        for (int rep = 0; rep < 2; rep++) /* twice is enough (Kahan-Parlett) */
            for (int t = 0; t <= k; t++) {
                const double *qt = Q + (size_t)t * dv;
                double h = 0;
                for (int i = 0; i < dv; i++) h += qt[i] * w[i];
                for (int i = 0; i < dv; i++) w[i] -= h * qt[i];
            }
        m = k + 1;
        th = tri_top(a, b, m);
        double bn = 0;
        for (int i = 0; i < dv; i++) bn += w[i] * w[i];
        bn = sqrt(bn);
        if (!(th > 0)) return 0.0; /* G = 0 */
        if (fabs(th - prev) <= 1e-13 * th || bn <= 1e-13 * th || k == dv - 1) break;
        prev = th;
        b[k] = bn;
        double *qn = Q + (size_t)(k + 1) * dv;
        for (int i = 0; i < dv; i++) qn[i] = w[i] / bn;
    }
    /* the Ritz vector, the next call's warm start */
    tri_vec(a, b, m, th, y, c);
    for (int i = 0; i < dv; i++) vec[i] = 0;
    for (int t = 0; t < m; t++)
        for (int i = 0; i < dv; i++) vec[i] += y[t] * Q[(size_t)t * dv + i];
    return sqrt(th);
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
