/* evref.h - brute-force sequential h2o, tova and snapkv, for the C tests.
 *
 * The rules of docs/ALGORITHMS.md sections 4-4c as one rank holding every
 * token applies them, written as plainly as possible: the held tokens in a
 * list in index order, scores recomputed from scratch, evictions by a
 * sort of all candidates.  Logits are kv_dot_fixed(q, k) * (float)scale
 * (the rounding the methods use), softmax sums in double over the list. */
#ifndef KVSTREAM_TEST_EVREF_H
#define KVSTREAM_TEST_EVREF_H

#include <stdint.h>

typedef enum { EVREF_H2O, EVREF_TOVA, EVREF_SNAPKV } evref_kind;

typedef struct {
    evref_kind kind;
    int d, dv;
    const float *K, *V; /* the whole stream */
    float scale;
    int64_t B, R, E;    /* tokens; h2o: recent; decision spacing */
    int64_t W, T, kern; /* snapkv: window positions, period T' (min(period, B - W)), kernel */
    int maxpool;
    double alpha;       /* a group's floor (AdaKV's safeguard): each stream keeps floor(alpha K / ns) of the K kept */
    int64_t fed, xlast; /* tokens received; last decision point */
    int64_t n, *idx;    /* held, ascending */
    double *score;      /* h2o: accumulated; tova: last weights */
    int64_t nrows;      /* tova: the last position's rows; snapkv: the buffered rows */
    float *rq;
    int64_t *rp;
    double *rml;
} evref;

/* A reference for a stream of nmax tokens (K, V); the caller sets the
 * parameters above after it. */
void evref_init(evref *h, evref_kind kind, int d, int dv, const float *K, const float *V, int64_t nmax);
void evref_free(evref *h);

/* Queries at position p: the decision points up to p (tokens arriving
 * before each), then nq rows Q answered into st (nq partial states), then
 * the scores updated. */
void evref_query(evref *h, const float *Q, int nq, int64_t p, double *st);

/* A group of ns streams h[0..ns) under a layer or trace budget scope
 * (ALGORITHMS.md 4g): B = h[0].B is their total (h2o: each keeps its R
 * newest, the heavy pool B - ns R is shared; snapkv: T = h[0].T is the
 * group's), and the lowest keys of all their candidates go (stream k's
 * index encoded idx ns + k), except that a stream keeps at least
 * floor(h[0].alpha K / ns) of its candidates when the group keeps K
 * (AdaKV's floor).  Q: ns x nq rows (stream-major), st: ns x nq states.
 * evref_query is the group of one. */
void evref_group_query(evref *h, int ns, const float *Q, int nq, int64_t p, double *st);

#endif
