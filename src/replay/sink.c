/* sink.c - rank 0's metrics sink (see sink.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include "kernels/metrics.h"
#include "kernels/partial.h"
#include "replay/cost.h"
#include "replay/sink.h"

void replay_sink_group(const replay *r, int mi, char *buf, size_t len)
{
    snprintf(buf, len, "/methods/%s", r->inst[mi].spec.label);
}

static int create_results(replay_sink *k, const replay *r, kv_err *err)
{
    k->res = kv_results_create(r->o->out, err);
    if (!k->res) return err->code;
    int64_t d2[2] = { r->S, r->m }, d3[3] = { r->S, r->m, r->dv };
    if (r->ref >= 0 && kv_results_dataset(k->res, "/", "output_norm_ratio", KV_R_F64, 2, d2, err)) return err->code;
    for (int mi = 0; mi < r->M; mi++) {
        char g[128];
        replay_sink_group(r, mi, g, sizeof g);
        if (kv_results_group(k->res, g, err)) return err->code;
        /* --reference none: nothing to measure against, so no error datasets */
        if (r->ref >= 0 && kv_results_dataset(k->res, g, "rel_error", KV_R_F64, 2, d2, err)) return err->code;
        if (r->ref >= 0 && r->o->bound_ratio && kv_results_dataset(k->res, g, "bound_ratio", KV_R_F64, 2, d2, err)) return err->code;
        if (r->o->save_outputs && kv_results_dataset(k->res, g, "outputs", KV_R_F32, 3, d3, err)) return err->code;
    }
    return kv_results_flush(k->res, err);
}

int replay_sink_new(replay_sink *k, const replay *r, kv_err *err)
{
    size_t dv = (size_t)r->dv;
    *k = (replay_sink){ 0 };
    /* zeroed: a checkpoint saves them whole, rows not yet done included */
    k->rel = kv_calloc(r->z.rel / sizeof(double), sizeof(double), err);
    k->bound = kv_calloc(r->z.bound / sizeof(double), sizeof(double), err);
    k->mem_peak = kv_calloc((size_t)r->M, sizeof(int64_t), err);
    k->rtok = kv_calloc(r->z.rtok / sizeof(double), sizeof(double), err);
    k->onr = kv_calloc(r->z.onr / sizeof(double), sizeof(double), err);
    k->csum = kv_calloc((size_t)r->M * REPLAY_COST_LEN, sizeof(double), err);
    k->zref = kv_malloc(sizeof(double) * dv, err);
    k->z = kv_malloc(sizeof(double) * dv, err);
    if (err->code) return err->code;
    if (r->z.zout && !(k->zout = kv_malloc(r->z.zout, err))) return err->code;
    if (!r->o->out || r->o->resume) return KV_OK;
    return create_results(k, r, err);
}

int replay_sink_reopen(replay_sink *k, const replay *r, kv_err *err)
{
    /* rows before the checkpoint are in the results file already */
    if (r->o->out) k->res = kv_results_reopen(r->o->out, err);
    return err->code;
}

/* Method mi on every (stream, query) of the batch: rel [S][cnt], bnd [S][cnt], zout.
 * opn: |V_p|_op [nu][S] per distinct prefix, NULL without V^T V. */
static void method_metrics(replay_sink *k, const replay *r, const replay_batch *b, int mi, const double *opn,
                           const float *model, double *rel_b, double *bnd_b, double *onr_b)
{
    int dv = (int)r->dv;
    size_t sl = KV_PSTATE_LEN(dv);
    int64_t S = r->S, m = r->m, cnt = b->cnt, j0 = b->j0;
    const double *st = b->recv;
    for (int64_t s = 0; s < S; s++)
        for (int64_t jj = 0; jj < cnt; jj++) {
            const double *x = st + (((size_t)mi * S + s) * cnt + jj) * sl;
            kv_partial_output(x, dv, k->z);
            if (r->ref < 0) { /* --reference none: outputs only; the metrics stay NaN */
                rel_b[s * cnt + jj] = bnd_b[s * cnt + jj] = NAN;
                k->rel[(size_t)mi * S * m + s * m + j0 + jj] = k->bound[(size_t)mi * S * m + s * m + j0 + jj] = NAN;
                if (k->zout)
                    for (int c = 0; c < dv; c++) k->zout[(s * cnt + jj) * dv + c] = (float)k->z[c];
                continue;
            }
            const double *ref = st + (((size_t)r->ref * S + s) * cnt + jj) * sl;
            kv_partial_output(ref, dv, k->zref);
            double e = kv_rel_error(k->z, k->zref, dv);
            rel_b[s * cnt + jj] = e;
            k->rel[(size_t)mi * S * m + s * m + j0 + jj] = e;
            double bd = NAN;
            if (mi == r->ref) { /* |z*| over the RMS value norm of the prefix p */
                double vs = b->vsq ? b->vsq[b->uidx[jj] * S + s] : 0, p = (double)kv_trace_query_pos(r->tr)[j0 + jj];
                double zn = 0;
                for (int c = 0; c < dv; c++) zn += k->zref[c] * k->zref[c];
                onr_b[s * cnt + jj] = k->onr[s * m + j0 + jj] = vs > 0 && p > 0 ? sqrt(zn) / sqrt(vs / p) : NAN;
            }
            if (opn) {
                double sm2 = ref[KV_PS_L] > 0 ? sqrt(ref[KV_PS_L2]) / ref[KV_PS_L] : 0; /* |softmax(a)|_2 */
                double den = sm2 * opn[b->uidx[jj] * S + s]; /* |V_p|_op per distinct prefix */
                bd = den > 0 ? kv_l2_dist(k->z, k->zref, dv) / den : 0.0;
            }
            bnd_b[s * cnt + jj] = bd;
            k->bound[(size_t)mi * S * m + s * m + j0 + jj] = bd;
            if (k->zout)
                for (int c = 0; c < dv; c++) k->zout[(s * cnt + jj) * dv + c] = (float)k->z[c];
            if (model && mi == r->ref) {
                double zm[dv];
                for (int c = 0; c < dv; c++) zm[c] = model[(s * cnt + jj) * dv + c];
                double me = kv_rel_error(k->zref, zm, dv);
                if (me > k->model_max) k->model_max = me;
                k->model_sum += me;
                k->model_cnt++;
            }
        }
}

int replay_sink_batch(replay_sink *k, const replay *r, const replay_batch *b, kv_err *err)
{
    size_t Sc = (size_t)(r->S * b->cnt);
    double *rel_b = malloc(sizeof(double) * Sc), *bnd_b = malloc(sizeof(double) * Sc), *onr_b = malloc(sizeof(double) * Sc);
    float *model = NULL;
    int rc = KV_OK;
    /* memory: the largest epoch of the batch, summed over ranks, against the run's so far */
    for (int mi = 0; mi < r->M; mi++)
        for (int64_t u = 0; u < b->nu; u++)
            if (b->epsum[u * r->M + mi] > k->mem_peak[mi]) k->mem_peak[mi] = b->epsum[u * r->M + mi];
    if (!rel_b || !bnd_b || !onr_b) rc = kv_seterr(err, KV_EINTERNAL, "out of memory");
    for (int mi = 0; mi < r->M; mi++) /* the queries' costs, summed over ranks */
        for (int64_t s = 0; s < r->S; s++)
            for (int64_t jj = 0; jj < b->cnt; jj++) {
                const double *c = b->costsum + (((size_t)mi * r->S + s) * b->cnt + jj) * REPLAY_COST_LEN;
                for (int q = 0; q < REPLAY_COST_LEN; q++) k->csum[mi * REPLAY_COST_LEN + q] += c[q];
                k->rtok[(size_t)mi * r->S * r->m + s * r->m + b->j0 + jj] = c[REPLAY_COST_TOKENS];
            }
    if (!rc && r->in->has_model_outputs && r->o->semantics == KV_SEM_FULL) {
        model = malloc(sizeof(float) * Sc * (size_t)r->dv);
        if (!model) rc = kv_seterr(err, KV_EINTERNAL, "out of memory");
        else rc = kv_trace_read_model_outputs(r->tr, b->j0, b->cnt, model, err);
    }
    for (int mi = 0; mi < r->M && !rc; mi++) {
        method_metrics(k, r, b, mi, b->opn, model, rel_b, bnd_b, onr_b);
        if (k->res) {
            char g[128];
            replay_sink_group(r, mi, g, sizeof g);
            if (r->ref >= 0) rc = kv_results_write_rows(k->res, g, "rel_error", KV_R_F64, b->j0, b->cnt, rel_b, err);
            if (!rc && b->opn && r->ref >= 0) rc = kv_results_write_rows(k->res, g, "bound_ratio", KV_R_F64, b->j0, b->cnt, bnd_b, err);
            if (!rc && r->o->save_outputs)
                rc = kv_results_write_rows(k->res, g, "outputs", KV_R_F32, b->j0, b->cnt, k->zout, err);
            if (!rc && mi == r->ref)
                rc = kv_results_write_rows(k->res, "/", "output_norm_ratio", KV_R_F64, b->j0, b->cnt, onr_b, err);
        }
        if (!rc && r->o->on_outputs) rc = r->o->on_outputs(r->o->ctx, mi, b->j0, b->cnt, k->zout, err);
    }
    free(model); free(rel_b); free(bnd_b); free(onr_b);
    return rc;
}

int replay_sink_close(replay_sink *k, kv_err *err)
{
    if (k->res) kv_results_close(k->res, err);
    k->res = NULL;
    return err->code;
}

void replay_sink_free(replay_sink *k)
{
    if (k->res) {
        kv_err e2 = { 0, "" };
        kv_results_close(k->res, &e2);
    }
    free(k->rel); free(k->bound); free(k->mem_peak); free(k->rtok); free(k->onr); free(k->csum); free(k->zref); free(k->z); free(k->zout);
    *k = (replay_sink){ 0 };
}

void replay_sink_save(const replay_sink *k, const replay *r, kv_buf *out)
{
    if (r->rank != 0) return;
    kv_buf_put_arr(out, k->rel, r->z.rel);
    kv_buf_put_arr(out, k->bound, r->z.bound);
    kv_buf_put_arr(out, k->rtok, r->z.rtok);
    kv_buf_put_arr(out, k->onr, r->z.onr);
    kv_buf_put_arr(out, k->csum, sizeof(double) * REPLAY_COST_LEN * (size_t)r->M);
    kv_buf_put_arr(out, k->mem_peak, sizeof(int64_t) * (size_t)r->M);
    kv_buf_put_f64(out, k->model_max);
    kv_buf_put_f64(out, k->model_sum);
    kv_buf_put_i64(out, k->model_cnt);
}

int replay_sink_load(replay_sink *k, const replay *r, kv_rd *rd, kv_err *err)
{
    if (r->rank != 0) return KV_OK;
    rd->what = "the metrics";
    if (kv_rd_arr_to(rd, k->rel, r->z.rel, err) || kv_rd_arr_to(rd, k->bound, r->z.bound, err) ||
        kv_rd_arr_to(rd, k->rtok, r->z.rtok, err) || kv_rd_arr_to(rd, k->onr, r->z.onr, err) ||
        kv_rd_arr_to(rd, k->csum, sizeof(double) * REPLAY_COST_LEN * (size_t)r->M, err) ||
        kv_rd_arr_to(rd, k->mem_peak, sizeof(int64_t) * (size_t)r->M, err) ||
        kv_rd_f64(rd, &k->model_max, err) || kv_rd_f64(rd, &k->model_sum, err) || kv_rd_i64(rd, &k->model_cnt, err))
        return err->code;
    return KV_OK;
}
