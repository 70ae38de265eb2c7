/* subgen.h - SubGen's parameters and config, shared with methods that embed
 * a SubGen instance (window_subgen.c): they include kv_subgen_params in
 * their own table (KV_PARAM_INCLUDE) and create the instance from the parsed
 * config, so errors name the spec the user wrote. */
#ifndef KVSTREAM_SUBGEN_H
#define KVSTREAM_SUBGEN_H

#include "methods/method.h"

typedef struct {
    double delta;     /* join distance (doubles when the cluster cap is hit) */
    int64_t t;        /* reservoir keys per cluster, over all ranks; -1: 16, or from budget= with joint=1 */
    int64_t s;        /* l2 samples, over all ranks */
    int64_t seed;     /* -1: the replay's --seed */
    int64_t index;    /* 0 or 1 */
    int64_t clusters; /* cluster cap over all ranks; -1: derived from n (subgen/subgen.c) */
    kv_budget budget; /* budget=X: s and clusters from X (subgen/subgen.c) */
    int64_t joint;    /* 0: the paper's estimator (l2 numerator); 1: reservoirs carry values (subgen/subgen.c) */
    int64_t estimator; /* estimator=paper|joint (0|1); kv_subgen_check folds it into joint */
} kv_subgen_cfg;

/* delta, t, s, seed, index, clusters, budget, estimator, joint (defaults in the table's help) */
extern const kv_param_def kv_subgen_params[];

extern const kv_method_ops kv_method_subgen;

/* The clash rule of budget=, for subgen and for tables that include
 * kv_subgen_params (defs: that table, for the message): budget= with s= or
 * clusters= is an error, and so is s= with joint=1 (it has no l2 samples).
 * estimator= and its older spelling joint= must agree; the result is left
 * in cfg->joint. */
int kv_subgen_check(kv_subgen_cfg *cfg, const kv_param_def *defs, const kv_spec *spec, kv_err *err);

/* A SubGen state from a parsed config; errors name `text` (the user's spec). */
int kv_subgen_new(const kv_subgen_cfg *cfg, const char *text, const kv_method_ctx *ctx, void **state, kv_err *err);

#endif
