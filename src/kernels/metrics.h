/* metrics.h - error metrics and summaries (ALGORITHMS.md section 6). */
#ifndef KVSTREAM_METRICS_H
#define KVSTREAM_METRICS_H

#include <stddef.h>

/* |z - ref| / |ref| (2-norms); |z - ref| when ref is the zero vector. */
double kv_rel_error(const double *z, const double *ref, int dv);
double kv_l2_dist(const double *a, const double *b, int dv);

/* Square root of the top eigenvalue of the symmetric PSD matrix G (dv x dv,
 * full storage) by power iteration.  vec (dv) is the start vector and
 * receives the eigenvector, so a caller tracking a slowly changing G warm
 * starts it.  Iterates until the estimate changes by < 1e-9 relative. */
double kv_opnorm_from_gram(const double *G, int dv, double *vec, double *work);

typedef struct { double mean, p50, p95, p99, max; size_t count; } kv_summary;
/* Summary of x[0..n) (NaNs excluded).  Sorts a copy; x is unchanged. */
kv_summary kv_summarize(const double *x, size_t n);

#endif
