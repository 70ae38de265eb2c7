/* batch.c - partial states of a batch and their merge (see batch.h). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "core/signals.h"
#include "kernels/metrics.h"
#include "kernels/partial.h"
#include "mpi/agree.h"
#include "mpi/coll.h"
#include "replay/batch.h"
#include "replay/sizes.h"
#include "replay/cost.h"
#include "replay/instances.h"
#include "replay/streamref.h"

int replay_batch_new(replay_batch *b, const replay *r, kv_err *err)
{
    size_t dv = (size_t)r->dv;
    *b = (replay_batch){ .G = replay_gram_stage(r) };
    b->Q = kv_malloc(r->z.queries, err);
    /* zeroed: the MPI merge reads every slot (and valgrind checks that) */
    b->send = kv_calloc(r->z.send / sizeof(double), sizeof(double), err);
    b->uidx = kv_malloc(r->z.uidx, err);
    b->ep = kv_malloc(r->z.ep, err);
    if (r->z.recv) b->recv = kv_malloc(r->z.recv, err);
    if (r->z.gsend) b->gsend = kv_malloc(r->z.gsend, err);
    if (r->z.gsum) b->gsum = kv_malloc(r->z.gsum, err);
    if (r->z.opn) {
        b->opn = kv_malloc(r->z.opn, err);
        b->vsq = kv_malloc(r->z.vsq, err);
        b->opG = kv_malloc(sizeof(double) * dv * dv, err);
        b->work = kv_malloc(sizeof(double) * KV_OPNORM_WORK(dv), err);
    }
    /* zeroed: the first Lanczos start, and a checkpoint saves it whole */
    if (r->z.ev) b->ev = kv_calloc(r->z.ev / sizeof(double), sizeof(double), err);
    if (r->z.epsum) b->epsum = kv_malloc(r->z.epsum, err);
    if (r->z.ml) b->ml = kv_malloc(r->z.ml, err);
    if (r->z.sel) b->sel = kv_malloc(r->z.sel, err);
    b->cost = kv_calloc(r->z.cost / sizeof(double), sizeof(double), err); /* zeroed: cost.c adds into it */
    if (r->z.costsum) b->costsum = kv_malloc(r->z.costsum, err);
    if (err->code) return err->code;
    b->have_merge = kv_merge_init(&b->mg, (int)r->dv) == MPI_SUCCESS;
    if (!b->have_merge) return kv_seterr(err, KV_EINTERNAL, "cannot create the MPI merge operator");
    return KV_OK;
}

void replay_batch_free(replay_batch *b)
{
    if (b->have_merge) kv_merge_free(&b->mg);
    replay_decide_free(&b->dz);
    free(b->Q); free(b->send); free(b->recv); free(b->gsend); free(b->gsum); free(b->uidx);
    free(b->opn); free(b->vsq); free(b->ev); free(b->opG); free(b->work); free(b->ep); free(b->epsum); free(b->ml); free(b->sel);
    free(b->cost); free(b->costsum);
    *b = (replay_batch){ 0 };
}

/* How method mi is answered (method.h): by select and partial_select after
 * the walk; by partial_batch after the walk; or by partial inside it; the
 * streamed reference (--reference stream) by the driver from the trace,
 * after the walk (streamref.h).  A
 * method with feedback is answered in the walk, since feedback must follow
 * each partial call. */
static int selects(const replay *r, int mi)
{
    const kv_method_ops *o = r->inst[mi].ops;
    return !r->inst[mi].streamed && o->select && o->select_len && o->partial_select;
}

static int batch_capable(const replay *r, int mi)
{
    const kv_method_ops *o = r->inst[mi].ops;
    return !r->inst[mi].streamed && o->partial_batch && !o->feedback && !selects(r, mi);
}

static int per_prefix(const replay *r, int mi)
{
    return !batch_capable(r, mi) && !selects(r, mi) && !r->inst[mi].streamed;
}

/* The cost slots of query jj of the batch, method mi, stream s (cost.h). */
static double *cost_slot(replay_batch *b, const replay *r, int mi, int64_t s, int64_t jj)
{
    return b->cost + (((size_t)mi * r->S + s) * b->cnt + jj) * REPLAY_COST_LEN;
}

/* Queries jj .. jj + g - 1 of the batch (prefixes p[0..g)) on every
 * instance of method mi: one partial_batch call, or, for a method that
 * answers one prefix at a time, one partial call (the g prefixes are equal). */
static void answer(replay_batch *b, replay *r, int mi, int64_t jj, int64_t g, const int64_t *p, kv_err *err)
{
    size_t sl = KV_PSTATE_LEN(r->dv);
    replay_instance *x = &r->inst[mi];
    int whole = batch_capable(r, mi), bad = 0;
    double t0 = omp_get_wtime();
#pragma omp parallel for schedule(dynamic) reduction(| : bad) if (r->par_streams)
    for (int64_t s = 0; s < r->S; s++) {
        const float *Q = b->Q + (s * b->cnt + jj) * r->d;
        double *st = b->send + (((size_t)mi * r->S + s) * b->cnt + jj) * sl;
        kv_query_cost c0;
        replay_cost_begin(x, s, &c0);
        bad |= (whole ? x->ops->partial_batch(x->st[s], Q, p, (int)g, st)
                      : x->ops->partial(x->st[s], Q, (int)g, p[0], st)) != KV_OK;
        replay_cost_end(r, x, s, &c0, g, 1, cost_slot(b, r, mi, s, jj));
    }
    x->t_query += omp_get_wtime() - t0;
    replay_instance_sample(x, r->S); /* what a method keeps from answering (scores, grown buffers) counts too */
    if (bad) kv_seterr(err, KV_EINTERNAL, "method %s: out of memory answering queries at prefixes %lld..%lld",
                       x->spec.label, (long long)p[0], (long long)p[g - 1]);
}

/* method.h: feedback, for the g queries at prefix p (batch queries jj..).
 * Collective: the (m, l) of every feedback method's states merged over the
 * ranks, then fed back on every rank.  This rank's error flag rides along
 * as one more pair; a raised one is agreed and ends the walk on every rank
 * (nonzero return).  A failed rank sends empty states and feeds nothing. */
static int feedback(replay_batch *b, replay *r, int64_t jj, int64_t g, int64_t p, kv_err *err)
{
    size_t sl = KV_PSTATE_LEN(r->dv), np = 0;
    int failed = err->code != KV_OK;
    for (int mi = 0; mi < r->M; mi++) {
        if (!r->inst[mi].ops->feedback) continue;
        for (int64_t s = 0; s < r->S; s++)
            for (int64_t q = 0; q < g; q++, np++) {
                const double *st = b->send + (((size_t)mi * r->S + s) * b->cnt + jj + q) * sl;
                b->ml[2 * np] = failed ? -INFINITY : st[KV_PS_M];
                b->ml[2 * np + 1] = failed ? 0.0 : st[KV_PS_L];
            }
    }
    b->ml[2 * np] = failed;
    b->ml[2 * np + 1] = 0.0;
    if (kv_ml_allreduce(b->ml, np + 1, r->comm) != MPI_SUCCESS) {
        kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the feedback states failed");
        return KV_OK; /* agreed at the next collective of the walk */
    }
    if (b->ml[2 * np] != 0) return kv_agree(r->comm, err); /* every rank sees the flag */
    np = 0;
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        if (!x->ops->feedback) continue;
        int bad = 0;
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(dynamic) reduction(| : bad) if (r->par_streams)
        for (int64_t s = 0; s < r->S; s++) {
            kv_query_cost c0; /* what feedback reads belongs to the queries it follows */
            replay_cost_begin(x, s, &c0);
            bad |= x->ops->feedback(x->st[s], b->Q + (s * b->cnt + jj) * r->d, (int)g, p,
                                    b->ml + 2 * (np + (size_t)(s * g))) != KV_OK;
            replay_cost_end(r, x, s, &c0, g, 0, cost_slot(b, r, mi, s, jj));
        }
        np += (size_t)(r->S * g);
        x->t_query += omp_get_wtime() - t0;
        replay_instance_sample(x, r->S);
        if (bad) kv_seterr(err, KV_EINTERNAL, "method %s: out of memory taking feedback at prefix %lld", x->spec.label,
                           (long long)p);
    }
    return KV_OK;
}

/* method.h: select, for the whole batch (prefixes p[0..cnt)).  Collective:
 * every rank's candidate lists, merged over the ranks (kv_topk_allreduce),
 * then every rank answers from the merged lists.  Nonzero only for an
 * error every rank holds; one of this rank alone is left in err. */
static int select_answer(replay_batch *b, replay *r, int mi, const int64_t *p, kv_err *err)
{
    replay_instance *x = &r->inst[mi];
    size_t sl = KV_PSTATE_LEN(r->dv);
    int64_t S = r->S, cnt = b->cnt;
    int L = x->ops->select_len(x->st[0]), lim[2] = { L, -L }, bad = 0;
    for (int64_t s = 1; s < S; s++)
        if (x->ops->select_len(x->st[s]) != L) lim[0] = INT32_MAX; /* streams disagree: refused below */
    /* the lists' datatype must be the same on every rank */
    if (kv_mpi_max_int(lim, lim, 2, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the select list length failed");
    else if (lim[0] != -lim[1] || L < 1)
        kv_seterr(err, KV_EINTERNAL, "method %s: select lists of different lengths (%d..%d)", x->spec.label, -lim[1],
                  lim[0]);
    /* the time of select and partial_select, not of the collectives
     * between (waits for the other ranks): like every method's answer time,
     * which never includes the merge */
    double t0 = omp_get_wtime();
    if (!err->code) {
#pragma omp parallel for schedule(dynamic) reduction(| : bad) if (r->par_streams)
        for (int64_t s = 0; s < S; s++) {
            kv_query_cost c0; /* select is part of answering: its reads count */
            replay_cost_begin(x, s, &c0);
            bad |= x->ops->select(x->st[s], b->Q + s * cnt * r->d, p, (int)cnt,
                                  b->sel + (size_t)(s * cnt) * L) != KV_OK;
            replay_cost_end(r, x, s, &c0, cnt, 0, cost_slot(b, r, mi, s, 0));
        }
        if (bad) kv_seterr(err, KV_EINTERNAL, "method %s: out of memory selecting for prefixes %lld..%lld",
                           x->spec.label, (long long)p[0], (long long)p[cnt - 1]);
    }
    x->t_query += omp_get_wtime() - t0;
    if (kv_agree(r->comm, err)) return err->code;
    if (kv_topk_allreduce(b->sel, (size_t)(S * cnt), L, r->comm) != MPI_SUCCESS) {
        kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the select lists failed");
        return KV_OK;
    }
    t0 = omp_get_wtime();
#pragma omp parallel for schedule(dynamic) reduction(| : bad) if (r->par_streams)
    for (int64_t s = 0; s < S; s++) {
        kv_query_cost c0;
        replay_cost_begin(x, s, &c0);
        bad |= x->ops->partial_select(x->st[s], b->Q + s * cnt * r->d, p, (int)cnt, b->sel + (size_t)(s * cnt) * L,
                                      b->send + ((size_t)mi * S + s) * cnt * sl) != KV_OK;
        replay_cost_end(r, x, s, &c0, cnt, 1, cost_slot(b, r, mi, s, 0));
    }
    x->t_query += omp_get_wtime() - t0;
    replay_instance_sample(x, r->S);
    if (bad) kv_seterr(err, KV_EINTERNAL, "method %s: out of memory answering queries at prefixes %lld..%lld",
                       x->spec.label, (long long)p[0], (long long)p[cnt - 1]);
    return KV_OK;
}

/* Collective: the staged V^T V snapshots summed onto rank 0, which turns
 * them into |V_p|_op.  Per stream the prefixes come in order, each Lanczos
 * run starting from the previous one's vector, exactly as when a whole
 * batch was staged: the same inputs in the same order, the same bits. */
static void flush_grams(replay_batch *b, const replay *r, kv_err *err)
{
    int dv = (int)r->dv;
    size_t gl = (size_t)dv * dv;
    int64_t S = r->S;
    if (!b->staged) return;
    if (kv_mpi_reduce_sum_f64(b->gsend, b->gsum, (size_t)(b->staged * S) * gl, 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Reduce of V^T V failed");
    else if (r->rank == 0)
        for (int64_t s = 0; s < S; s++)
            for (int64_t u = 0; u < b->staged; u++) {
                const double *U = b->gsum + ((size_t)u * S + s) * gl; /* upper triangle */
                double tr = 0;
                for (int i = 0; i < dv; i++) tr += U[i * dv + i];
                b->vsq[(b->u0 + u) * S + s] = tr;
                for (int i = 0; i < dv; i++)
                    for (int j = 0; j < dv; j++) b->opG[i * dv + j] = j >= i ? U[i * dv + j] : U[j * dv + i];
                b->opn[(b->u0 + u) * S + s] = kv_opnorm_from_gram(b->opG, dv, b->ev + s * dv, b->work);
            }
    b->u0 += b->staged;
    b->staged = 0;
}

/* End memory epoch u on this rank: each method's largest state since the
 * epoch began, and the next epoch starts from what it holds now. */
static void end_epoch(replay_batch *b, replay *r, int64_t u)
{
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        b->ep[u * r->M + mi] = replay_instance_epoch(r, x);
        x->epoch = replay_instance_bytes(x, r->S);
        x->dpeak = 0;
    }
}

/* The walk from the previous query position to p (batch queries jj..):
 * the deciding methods' points in between (tokens < x ingested, then the
 * decisions), then p's horizon and ingest and its decisions.  Collective
 * (decide.h); nonzero only for an error every rank holds. */
static int walk_to(replay_batch *b, replay *r, replay_shard *sh, int64_t pprev, int64_t p, kv_err *err)
{
    if (!replay_decide_any(r)) {
        if (!err->code) replay_shard_advance(sh, r, p, err);
        return KV_OK;
    }
    for (int64_t x = replay_decide_next(r, pprev); x < p; x = replay_decide_next(r, x)) {
        if (!err->code) replay_shard_ingest_to(sh, r, x, err);
        if (replay_decide_at(&b->dz, r, x, 0, err)) return err->code;
    }
    if (!err->code) replay_shard_advance(sh, r, p, err);
    return replay_decide_at(&b->dz, r, p, 1, err);
}

int replay_batch_tail(replay_batch *b, replay *r, replay_shard *sh, kv_err *err)
{
    const int64_t *pos = kv_trace_query_pos(r->tr);
    return walk_to(b, r, sh, r->m > 0 ? pos[r->m - 1] : 0, r->n, err);
}

/* After queries [0, done) of the walk, at position p: stop here?  Every
 * rank knows --stop-after, so it needs no message.  A signal is polled
 * collectively (a failed rank takes part too, so the ranks stay in step;
 * the error is agreed by the caller), but only every KV_POLL_POSITIONS
 * positions or after a shard chunk of tokens since the last poll: the same
 * positions on every rank, and one allreduce per few positions on traces
 * with a query at every token. */
#define KV_POLL_POSITIONS 8
static int stop_here(replay_batch *b, const replay *r, int64_t done, int64_t p, kv_err *err)
{
    const kv_replay_opts *o = r->o;
    if (o->stop_after > 0 && done >= o->stop_after && done < r->m) return 15;
    if (++b->poll_n < KV_POLL_POSITIONS && p - b->poll_p < r->C) return 0;
    b->poll_n = 0;
    b->poll_p = p;
    int sig = kv_signal_pending(), any = 0;
    if (kv_mpi_max_int(&sig, &any, 1, r->comm) != MPI_SUCCESS) {
        kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the stop signal failed");
        return 0;
    }
    return any;
}

int replay_batch_partials(replay_batch *b, replay *r, replay_shard *sh, int64_t j0, int64_t cnt, kv_err *err)
{
    const int64_t *pos = kv_trace_query_pos(r->tr);
    size_t gl = (size_t)(r->dv * r->dv);
    int64_t start = 0;
    if (b->walked > 0 && b->j0 == j0 && b->cnt == cnt) start = b->walked; /* a walk restored by --resume */
    else {
        b->nu = b->staged = b->u0 = 0;
        memset(b->cost, 0, r->z.cost);
    }
    b->j0 = j0;
    b->cnt = cnt;
    b->agreed = b->stop = 0;
    b->walked = 0;
    b->poll_n = 0;
    b->poll_p = start ? pos[j0 + start - 1] : j0 ? pos[j0 - 1] : 0;
    if (!err->code) kv_trace_read_queries(r->tr, j0, cnt, b->Q, err);
    /* the shard walks prefix by prefix whatever the methods: ingest blocks,
     * the per-prefix methods' calls and the V^T V snapshots stay as they
     * are.  Every rank walks every prefix (a failed one skips the work), so
     * the collectives below happen at the same points on all ranks */
    for (int64_t jj = start; jj < cnt;) {
        int64_t p = pos[j0 + jj], g = 1;
        while (jj + g < cnt && pos[j0 + jj + g] == p) g++; /* queries sharing a prefix */
        int last = jj + g == cnt;
        int64_t pprev = j0 + jj > 0 ? pos[j0 + jj - 1] : 0;
        if (walk_to(b, r, sh, pprev, p, err)) return b->agreed = 1, err->code;
        if (!err->code)
            for (int mi = 0; mi < r->M; mi++)
                if (per_prefix(r, mi)) answer(b, r, mi, jj, g, pos + j0 + jj, err);
        if (b->ml && feedback(b, r, jj, g, p, err)) return b->agreed = 1, err->code;
        if (b->gsend) {
            if (!err->code)
                for (int64_t s = 0; s < r->S; s++)
                    memcpy(b->gsend + ((size_t)b->staged * r->S + s) * gl, sh->gram + (size_t)s * gl,
                           sizeof(double) * gl);
            /* full: flush now; the last ones go with the merge */
            if (++b->staged == b->G && !last) {
                if (kv_agree(r->comm, err)) return b->agreed = 1, err->code;
                flush_grams(b, r, err);
            }
        }
        for (int64_t q = 0; q < g; q++) b->uidx[jj + q] = b->nu;
        if (!last) end_epoch(b, r, b->nu); /* the last epoch also holds the whole-batch answers below */
        b->nu++;
        jj += g;
        /* at a position boundary, so a checkpoint written now is resumed
         * bitwise (batch.h); the last position goes on to the batch end */
        if (!last && (b->stop = stop_here(b, r, j0 + jj, p, err))) {
            b->walked = jj;
            return err->code;
        }
    }
    /* batch-capable methods see only tokens < their query's prefix, so
     * answering after the walk gives what answering inside it would */
    for (int mi = 0; mi < r->M && !err->code; mi++)
        if (batch_capable(r, mi)) answer(b, r, mi, 0, cnt, pos + j0, err);
        else if (r->inst[mi].streamed) replay_streamref_answer(b, r, sh, mi, pos + j0, err);
    for (int mi = 0; mi < r->M; mi++)
        if (selects(r, mi) && select_answer(b, r, mi, pos + j0, err)) return b->agreed = 1, err->code;
    if (!err->code) end_epoch(b, r, b->nu - 1);
    return err->code;
}

int replay_batch_merge(replay_batch *b, const replay *r, kv_err *err)
{
    /* all run on every rank: all ranks agreed just before, so no rank skips one */
    size_t count = (size_t)(r->M * r->S * b->cnt);
    if (kv_merge_reduce(&b->mg, b->send, b->recv, count, 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Reduce of partial states failed");
    if (b->gsend) flush_grams(b, r, err);
    if (kv_mpi_reduce_sum_i64(b->ep, b->epsum, (size_t)(b->nu * r->M), 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Reduce of the memory epochs failed");
    if (kv_mpi_reduce_sum_f64(b->cost, b->costsum, count * REPLAY_COST_LEN, 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Reduce of the query costs failed");
    return err->code;
}

/* The rows of method mi the walk has answered: the first `walked` queries
 * of each stream, for a method answered in the walk; none otherwise. */
static int64_t walk_rows(const replay_batch *b, const replay *r, int mi)
{
    return per_prefix(r, mi) ? b->walked : 0;
}

void replay_batch_save(const replay_batch *b, const replay *r, kv_buf *out)
{
    size_t sl = KV_PSTATE_LEN(r->dv), gl = (size_t)(r->dv * r->dv);
    if (r->rank == 0) kv_buf_put_arr(out, b->ev, r->z.ev);
    kv_buf_put_i64(out, b->walked);
    if (b->walked <= 0) return;
    kv_buf_put_i64(out, b->nu);
    kv_buf_put_i64(out, b->staged);
    kv_buf_put_i64(out, b->u0);
    kv_buf_put_arr(out, b->uidx, sizeof(int64_t) * (size_t)b->walked);
    kv_buf_put_arr(out, b->ep, sizeof(int64_t) * (size_t)(b->nu * r->M));
    for (int mi = 0; mi < r->M; mi++)
        for (int64_t s = 0; s < r->S; s++) {
            size_t at = (size_t)mi * r->S + s, rows = (size_t)walk_rows(b, r, mi);
            kv_buf_put_arr(out, b->send + at * b->cnt * sl, sizeof(double) * rows * sl);
            kv_buf_put_arr(out, b->cost + at * b->cnt * REPLAY_COST_LEN, sizeof(double) * rows * REPLAY_COST_LEN);
        }
    if (b->gsend) kv_buf_put_arr(out, b->gsend, sizeof(double) * (size_t)(b->staged * r->S) * gl);
    if (b->opn && r->rank == 0) kv_buf_put_arr(out, b->opn, sizeof(double) * (size_t)(b->u0 * r->S));
    if (b->vsq && r->rank == 0) kv_buf_put_arr(out, b->vsq, sizeof(double) * (size_t)(b->u0 * r->S));
}

int replay_batch_load(replay_batch *b, const replay *r, kv_rd *rd, int64_t next, kv_err *err)
{
    int64_t w, nu = 0, staged = 0, u0 = 0, cnt = replay_min64(r->B, r->m - next);
    rd->what = "the batch walk";
    if (r->rank == 0 && kv_rd_arr_to(rd, b->ev, r->z.ev, err)) return err->code;
    if (kv_rd_i64(rd, &w, err)) return err->code;
    if (w == 0) return KV_OK;
    if (kv_rd_i64(rd, &nu, err) || kv_rd_i64(rd, &staged, err) || kv_rd_i64(rd, &u0, err)) return err->code;
    int bad = w < 0 || w >= cnt || nu < 1 || nu > w || staged < 0 || u0 < 0 ||
              (b->gsend ? staged > b->G || u0 + staged != nu : staged || u0);
    if (bad) return kv_seterr(err, KV_EINPUT, "checkpoint: the batch walk is corrupt");
    size_t sl = KV_PSTATE_LEN(r->dv), gl = (size_t)(r->dv * r->dv);
    b->j0 = next; b->cnt = cnt; b->walked = w; b->nu = nu; b->staged = staged; b->u0 = u0;
    if (kv_rd_arr_to(rd, b->uidx, sizeof(int64_t) * (size_t)w, err) ||
        kv_rd_arr_to(rd, b->ep, sizeof(int64_t) * (size_t)(nu * r->M), err))
        return err->code;
    for (int mi = 0; mi < r->M; mi++)
        for (int64_t s = 0; s < r->S; s++) {
            size_t at = (size_t)mi * r->S + s, rows = (size_t)walk_rows(b, r, mi);
            if (kv_rd_arr_to(rd, b->send + at * cnt * sl, sizeof(double) * rows * sl, err) ||
                kv_rd_arr_to(rd, b->cost + at * cnt * REPLAY_COST_LEN, sizeof(double) * rows * REPLAY_COST_LEN, err))
                return err->code;
        }
    if (b->gsend && kv_rd_arr_to(rd, b->gsend, sizeof(double) * (size_t)(staged * r->S) * gl, err)) return err->code;
    if (b->opn && r->rank == 0 && kv_rd_arr_to(rd, b->opn, sizeof(double) * (size_t)(u0 * r->S), err)) return err->code;
    if (b->vsq && r->rank == 0 && kv_rd_arr_to(rd, b->vsq, sizeof(double) * (size_t)(u0 * r->S), err)) return err->code;
    for (int64_t q = 0; q < w; q++)
        if (b->uidx[q] < 0 || b->uidx[q] >= nu) return kv_seterr(err, KV_EINPUT, "checkpoint: the batch walk is corrupt");
    return KV_OK;
}
