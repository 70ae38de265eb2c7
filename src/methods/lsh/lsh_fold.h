/* lsh_fold.h - lsh's fold of a query's sample (methods/lsh/lsh.c): e^{a_i} / u_i
 * over the sampled rows, u_i the chance that row i is sampled.
 *
 *   kv_lsh_fold  the sample's rows into a partial state, in row order
 *
 * Split from lsh.c (its tables and walk stay there). */
#ifndef KVSTREAM_METHODS_LSH_FOLD_H
#define KVSTREAM_METHODS_LSH_FOLD_H

#include <stddef.h>
#include <stdint.h>

#define KV_LSH_FB 16 /* rows whose log u are computed together */

/* what the fold reads of an lsh state */
typedef struct {
    const float *Kr, *V; /* rows' keys (d) and values (dv) */
    int d, dv, K, L, thr;
    float scale;
    double lt0; /* log C(L, thr) */
} kv_lsh_rows;

/* rows[0 .. ns) (increasing) folded into st (a partial state, cleared by
 * the caller); dot: scratch of 2 ns floats, lu: of ns + KV_LSH_FB doubles.
 * thr = 0: every weight 1 (exact attention over the rows). */
void kv_lsh_fold(const kv_lsh_rows *r, const float *q, const uint32_t *rows, size_t ns, float *dot, double *lu,
                 double *st);

#endif
