/* errstats.c - error figures over all queries and per stream (see errstats.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "kernels/metrics.h"
#include "replay/errstats.h"

static int is_small(const replay_sink *k, int64_t i)
{
    return k->onr && k->onr[i] < KV_SMALL_OUTPUT; /* NaN (not measured): not small */
}

replay_errstats replay_errstats_of(const replay *r, const replay_sink *k, int mi, int64_t s)
{
    replay_errstats o = { NAN, NAN, NAN, NAN, NAN, NAN, 0 };
    int64_t m = r->m, s0 = s < 0 ? 0 : s, s1 = s < 0 ? r->S : s + 1, n = (s1 - s0) * m;
    const double *rel = k->rel + (size_t)mi * (size_t)(r->S * m) + s0 * m;
    const double *bnd = k->bound + (size_t)mi * (size_t)(r->S * m) + s0 * m;
    double *kept = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!kept) return o;
    kv_summary e = kv_summarize(rel, (size_t)n), bd = kv_summarize(bnd, (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        int sm = r->ref >= 0 && is_small(k, s0 * m + i); /* --reference none: no z*, nothing small */
        o.small += sm;
        kept[i] = sm ? NAN : rel[i];
    }
    kv_summary km = kv_summarize(kept, (size_t)n);
    free(kept);
    o.p50 = e.p50; o.p95 = e.p95; o.p99 = e.p99; o.max = e.max; o.mean = km.mean; o.bound_p95 = bd.p95;
    return o;
}

int replay_errstats_write(const replay *r, const replay_sink *k, kv_results *x, int mi, const char *g, kv_err *err)
{
    int64_t S = r->S, dims[1] = { S };
    char ps[160];
    snprintf(ps, sizeof ps, "%s/per_stream", g);
    double *f = kv_malloc(sizeof(double) * (size_t)(5 * S), err);
    int64_t *iv = kv_malloc(sizeof(int64_t) * (size_t)(3 * S), err);
    if (err->code) { free(f); free(iv); return err->code; }
    for (int64_t s = 0; s < S; s++) {
        replay_errstats e = replay_errstats_of(r, k, mi, s);
        f[s] = e.p50; f[S + s] = e.p95; f[2 * S + s] = e.mean; f[3 * S + s] = e.bound_p95; f[4 * S + s] = e.max;
        iv[s] = e.small;
    }
    /* stream s = layer x n_kv_heads + kv head (docs/TRACE_FORMAT.md) */
    int64_t L = r->in->n_layers, H = r->in->n_kv_heads;
    int heads = L > 0 && H > 0 && L * H == S;
    for (int64_t s = 0; heads && s < S; s++) { iv[S + s] = s / H; iv[2 * S + s] = s % H; }
    if (!kv_results_group(x, ps, err) &&
        !kv_results_write_all(x, ps, "rel_error_p50", KV_R_F64, 1, dims, f, err) &&
        !kv_results_write_all(x, ps, "rel_error_p95", KV_R_F64, 1, dims, f + S, err) &&
        !kv_results_write_all(x, ps, "rel_error_mean", KV_R_F64, 1, dims, f + 2 * S, err) &&
        !kv_results_write_all(x, ps, "bound_ratio_p95", KV_R_F64, 1, dims, f + 3 * S, err) &&
        !kv_results_write_all(x, ps, "rel_error_max", KV_R_F64, 1, dims, f + 4 * S, err) &&
        !kv_results_write_all(x, ps, "small_outputs", KV_R_I64, 1, dims, iv, err) && heads &&
        !kv_results_write_all(x, ps, "layer", KV_R_I64, 1, dims, iv + S, err))
        kv_results_write_all(x, ps, "kv_head", KV_R_I64, 1, dims, iv + 2 * S, err);
    free(f);
    free(iv);
    return err->code;
}
