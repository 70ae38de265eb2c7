/* state.h - SubGen's state, shared by the files of src/methods/subgen/ and
 * by nothing else (users include methods/subgen.h).  subgen.c has the method
 * and its memory rules, index.c the nearest-centre search, kcentre.c the
 * cluster cap's k-centre merging, ingest.c the per-token update, estim.c the
 * estimates, save.c the checkpoints. */
#ifndef KVSTREAM_SUBGEN_STATE_H
#define KVSTREAM_SUBGEN_STATE_H

#include <float.h>
#include <stdint.h>
#include "core/rng.h"
#include "kernels/lanes16.h"
#include "methods/method.h"
#include "methods/common/sampler.h"
#include "methods/subgen.h"

#define NP 16           /* dimensions of the index projection */
#define CB KV_L16       /* centres per transposed block */
#define CHUNK 64        /* centres per OpenMP work item (a multiple of CB) */
#define PAR_WORK 262144 /* nc * d above which the scan goes parallel */
#define IDX_MIN 16      /* clusters from which the index is tried */
#define GK KV_BLK_KEYS  /* keys scanned together in one pass over the centres */

typedef struct {
    kv_reservoir r; /* r.n = n_c */
    int64_t cap;    /* key rows allocated */
    float *keys;    /* kv_reservoir_size(&r) rows of d floats */
    float *vals;    /* joint=1: the same rows' values (dv floats each); else NULL */
} cluster;

typedef struct {
    kv_method_ctx ctx;
    double delta, delta2;   /* join distance now (doubled at the cap), squared */
    double delta0;          /* the spec's delta */
    int64_t t;              /* this rank's reservoir size */
    int s, use_index;       /* this rank's l2 samples (0 with joint) */
    int joint;              /* reservoirs carry values; no l2 samples, no exact buffer */
    int64_t cap;            /* this rank's cluster cap */
    int64_t doublings;      /* times the cap doubled delta */
    kv_rng rng;
    /* clustering */
    int64_t nc, ccap, nres; /* clusters, allocated, reservoir keys held */
    int64_t layout;         /* bumped when centres move or arrays grow (scan-ahead rows go stale) */
    float *cent;            /* centres in blocks of CB: see cblock() */
    float *cnorm;           /* |c|^2 */
    cluster *cl;
    double cmax;            /* max |c| */
    float *dist;            /* scratch: fast squared distances of one scan */
    float *pre;             /* scratch: GK rows of distances computed ahead */
    int64_t pre_cap;        /* floats per pre row */
    unsigned hist;          /* bit per recent token: it needed a scan */
    int scanned;            /* the current token needed a scan */
    /* index (use_index) */
    float *proj;            /* NP x d Gaussian projection */
    float *cproj;           /* projected centres, blocks of CB like cent */
    double *nnd;            /* lower bound of |c - c'| over other centres c' */
    int64_t last;           /* cluster of the previous token */
    /* l2 sampling */
    kv_l2_sampler l2;
    float *sk, *sv;         /* s x d sampled keys, s x dv sampled values */
    int *take;              /* scratch for kv_l2_offer */
    /* exact buffer for the numerator */
    int buf_on;
    int64_t nval, nbuf, bcap; /* tokens with v != 0, rows held, allocated */
    float *bk, *bv;
    kv_query_cost cost;     /* method.h: cost */
} subgen;

/* Centres are stored in blocks of CB: coordinate i of centres 16b .. 16b+15
 * is one row of CB floats, so a scan broadcasts k[i] and updates CB
 * distances with one SIMD multiply-add (no horizontal sums).  Lanes past nc
 * in the last block hold zeros and are ignored. */
static inline float *cblock(const subgen *g, int64_t j)
{
    return g->cent + (size_t)(j / CB) * CB * (size_t)g->ctx.d;
}

/* centre j as a row of d floats */
static inline void centre_row(const subgen *g, int64_t j, float *row)
{
    const float *c = cblock(g, j) + j % CB;
    for (int i = 0; i < g->ctx.d; i++) row[i] = c[(size_t)i * CB];
}

/* Bound on the rounding error of a float |a|^2 - 2<a,b> + |b|^2 (generous:
 * several times the worst case of the lane sums). */
static inline double fast_err(int d, double na, double nb)
{
    return 2.0 * (d + 4) * FLT_EPSILON * (na + nb) * (na + nb);
}

/* subgen.c: capacities (a function of what is held, so that a checkpoint
 * restores the same bytes()) and the byte units of the memory rules */
int64_t sg_ccap_for(const subgen *g, int64_t need); /* cluster slots: whole blocks, up to the cap */
int64_t sg_bcap_for(const subgen *g, int64_t need); /* exact buffer rows: at most s */
int64_t sg_slot_bytes(int d, int use_index);
void sg_free_clusters(subgen *g);

/* index.c: the nearest centre */
void sg_project(const subgen *g, const float *k, float *pk);
double sg_dist2_centre(const subgen *g, const float *k, int64_t j);
void sg_scan_from(const subgen *g, const float *const *k, const float *kn, int nk, int64_t b0, float *const *dist);
int64_t sg_find_cluster(subgen *g, const float *k, float kn, const float *pk, const float *pre, int64_t pre_nc);
int sg_open_cluster(subgen *g, const float *k, float kn, const float *pk, kv_err *err);

/* kcentre.c: the cluster cap */
int64_t sg_make_room(subgen *g, const float *k, float kn, const float *pk, kv_err *err);

/* ingest.c, estim.c, save.c: the method's hooks */
int sg_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err);
int sg_partial(void *state, const float *Q, int nq, int64_t p, double *st);
void sg_save(const void *state, kv_buf *out);
int sg_load(void *state, kv_rd *in, kv_err *err);

#endif
