/* metrics.h - error metrics and summaries (ALGORITHMS.md section 6). */
#ifndef KVSTREAM_METRICS_H
#define KVSTREAM_METRICS_H

#include <stddef.h>

/* |z - ref| / |ref| (2-norms); |z - ref| when ref is the zero vector. */
double kv_rel_error(const double *z, const double *ref, int dv);
double kv_l2_dist(const double *a, const double *b, int dv);

/* Square root of the top eigenvalue of the symmetric PSD matrix G (dv x dv,
 * full storage), by Lanczos with full reorthogonalisation, stopping when the
 * top Ritz value changes by < 1e-13 relative (at most dv steps, then exact
 * up to rounding).  vec (dv) is a warm start (0 is fine) and receives the
 * top Ritz vector, so a caller tracking a slowly changing G passes it back.
 * work: KV_OPNORM_WORK(dv) doubles.  Deterministic: a function of G and vec. */
#define KV_OPNORM_WORK(dv) ((size_t)(dv) * (size_t)(dv) + 5 * (size_t)(dv))
double kv_opnorm_from_gram(const double *G, int dv, double *vec, double *work);

/* An exact output z* with |z*| below this fraction of the RMS value norm of
 * its prefix (sqrt(|V_p|_F^2 / p)) is a "small output": its relative error
 * divides by almost nothing, so it is counted apart and left out of mean
 * relative errors (docs/RESULTS_FORMAT.md). */
#define KV_SMALL_OUTPUT 1e-3

typedef struct { double mean, p50, p95, p99, max; size_t count; } kv_summary;
/* Summary of x[0..n) (NaNs excluded).  Sorts a copy; x is unchanged. */
kv_summary kv_summarize(const double *x, size_t n);

#endif
