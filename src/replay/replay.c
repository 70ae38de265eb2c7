/* replay.c - the replay driver (see replay.h): the stages, in order.
 *
 *   open      trace, method instances (instances.c), --max-memory (sizes.c),
 *             the stages' buffers; --resume (ckptstate.c)
 *   a batch   partial states, advancing the shard prefix by prefix, with the
 *             method hooks' collectives and the V^T V flushes (batch.c,
 *             shard.c) -> merge on rank 0 (batch.c) -> metrics, memory epochs
 *             and result rows (sink.c) -> progress line (summary.c) -> stop /
 *             checkpoint
 *   end       the rest of the shard, totals and the table (summary.c)
 *
 * Whatever can fail on one rank only is followed by kv_agree before the next
 * collective, so all ranks leave together with the same error. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/signals.h"
#include "mpi/agree.h"
#include "mpi/coll.h"
#include "replay/batch.h"
#include "replay/sizes.h"
#include "replay/ckptstate.h"
#include "replay/instances.h"
#include "replay/replay.h"
#include "replay/shard.h"
#include "replay/sink.h"
#include "replay/summary.h"

void kv_replay_defaults(kv_replay_opts *o)
{
    memset(o, 0, sizeof *o);
    o->batch = 64;
    o->seed = 1;
    o->semantics = KV_SEM_FULL;
    o->bound_ratio = 1;
}

/* The trace's shape, the shard unit and the batch size. */
static void set_shape(replay *r)
{
    const kv_replay_opts *o = r->o;
    r->in = kv_trace_get_info(r->tr);
    r->S = r->in->S; r->n = r->in->n; r->m = r->in->m; r->d = r->in->d; r->dv = r->in->dv;
    /* shard unit: the file's chunk, but small enough that every rank gets tokens */
    r->C = o->shard_chunk > 0 ? o->shard_chunk : r->in->chunk > 0 ? r->in->chunk : 4096;
    if (!o->shard_chunk && r->C > (r->n + r->P - 1) / r->P) r->C = (r->n + r->P - 1) / r->P;
    if (r->C > r->n) r->C = r->n;
    r->B = replay_min64(o->batch, r->m);
    r->par_streams = r->S > 1 && r->nthreads > 1;
}

/* Everything before the first batch.  Collective; errors agreed. */
static int open_run(replay *r, replay_shard *sh, replay_batch *b, replay_sink *k, kv_err *err)
{
    const kv_replay_opts *o = r->o;
    if (o->batch < 1) kv_seterr(err, KV_EINPUT, "--batch must be >= 1");
    if (o->semantics == KV_SEM_WINDOW_UNMASKED && o->window < 1)
        kv_seterr(err, KV_EINPUT, "--semantics window-unmasked-values needs --window W >= 1");
    if (!err->code) replay_instances_new(r, err);
    if (kv_agree(r->comm, err)) return err->code;
    r->tr = kv_trace_open(o->trace, r->comm, err);
    if (kv_agree(r->comm, err)) return err->code;
    set_shape(r);
    replay_instances_create(r, err);
    if (kv_agree(r->comm, err)) return err->code;
    replay_instances_drop_unfit(r, err);
    if (kv_agree(r->comm, err)) return err->code;
    r->z = replay_sizes_compute(r);
    replay_budget_check(r, err); /* before the buffers are allocated */
    /* a bad --floors FILE is refused now, not after the run (summary.c reads it) */
    if (o->floors && r->rank == 0) {
        FILE *f = fopen(o->floors, "r");
        kv_floors fl;
        if (f) fclose(f);
        if (f && !err->code) kv_floors_read(o->floors, &fl, err);
    }
    if (kv_agree(r->comm, err)) return err->code;
    if (!replay_shard_new(sh, r, err) && !replay_batch_new(b, r, err) && r->rank == 0) replay_sink_new(k, r, err);
    return kv_agree(r->comm, err);
}

/* The stop's error: KV_ESTOPPED, saying where and how to go on. */
static int stopped(const replay *r, int sig, int64_t done, int inside, kv_err *err)
{
    const char *where = inside ? " (inside a batch)" : "";
    if (r->o->checkpoint)
        return kv_seterr(err, KV_ESTOPPED, "stopped by signal %d after %lld of %lld queries%s; checkpoint written to %s "
                         "(continue with --resume %s)", sig, (long long)done, (long long)r->m, where, r->o->checkpoint,
                         r->o->checkpoint);
    return kv_seterr(err, KV_ESTOPPED, "stopped by signal %d after %lld of %lld queries%s (no --checkpoint given)", sig,
                     (long long)done, (long long)r->m, where);
}

/* A stop before the first batch (start-up, or the resume's rebuild): every
 * rank agrees; nothing ran, so no checkpoint is written (a --resume's file
 * stays as it was and can be resumed again). */
static int stop_at_start(const replay *r, int64_t j0, kv_err *err)
{
    int sig = kv_signal_pending(), any = 0;
    if (kv_mpi_max_int(&sig, &any, 1, r->comm) != MPI_SUCCESS)
        return kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the stop signal failed");
    if (!any) return KV_OK;
    if (r->o->resume)
        return kv_seterr(err, KV_ESTOPPED, "stopped by signal %d during start-up, before query %lld of %lld; checkpoint "
                         "%s unchanged (continue with --resume %s)", any, (long long)j0, (long long)r->m, r->o->resume,
                         r->o->resume);
    return kv_seterr(err, KV_ESTOPPED, "stopped by signal %d during start-up, before the first query (nothing ran, "
                     "no checkpoint written)", any);
}

/* KVSTREAM_READY=1 (tests): rank 0 says when the queries start, so a test
 * signals a running replay without guessing how long start-up takes. */
static void say_ready(const replay *r, int64_t j0)
{
    const char *e = getenv("KVSTREAM_READY");
    if (r->rank != 0 || !e || !*e || !strcmp(e, "0")) return;
    fprintf(stderr, "kvstream: ready: replaying from query %lld of %lld on %d ranks\n", (long long)j0, (long long)r->m,
            r->P);
    fflush(stderr);
}

/* After queries [0, done): a signal on any rank (or --stop-after) stops all
 * of them, with a checkpoint when --checkpoint is given; --checkpoint-every
 * writes one without stopping.  Returns KV_ESTOPPED to stop. */
static int stop_or_checkpoint(const replay *r, const replay_shard *sh, const replay_batch *b, replay_sink *k,
                              int64_t fp, int64_t j0, int64_t done, kv_err *err)
{
    const kv_replay_opts *o = r->o;
    if (o->stop_after > 0 && done >= o->stop_after && done < r->m && r->rank == 0) kv_signal_raise(15);
    int sig = kv_signal_pending(), any = 0;
    if (kv_mpi_max_int(&sig, &any, 1, r->comm) != MPI_SUCCESS) /* agreed after the next batch */
        kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the stop signal failed");
    int due = o->checkpoint_every > 0 && done / o->checkpoint_every > j0 / o->checkpoint_every && done < r->m;
    if ((any || due) && o->checkpoint && replay_ckpt_write(r, sh, b, k, fp, done, err)) return err->code;
    if (!any || done >= r->m) return KV_OK;
    return stopped(r, any, done, 0, err);
}

/* The walk of the batch from query j0 stopped on a signal (batch.h): the
 * checkpoint holds the rows before j0 and the walk so far. */
static int stop_inside(const replay *r, const replay_shard *sh, const replay_batch *b, replay_sink *k, int64_t fp,
                       int64_t j0, kv_err *err)
{
    if (r->o->checkpoint && replay_ckpt_write(r, sh, b, k, fp, j0, err)) return err->code;
    return stopped(r, b->stop, j0 + b->walked, 1, err);
}

int kv_replay_run(const kv_replay_opts *o, MPI_Comm comm, kv_replay_result *res, kv_err *err)
{
    replay R = { .o = o, .comm = comm, .nthreads = omp_get_max_threads() }, *r = &R;
    replay_shard sh = { .loaded = -1 };
    replay_batch b = { 0 };
    replay_sink k = { 0 };
    double t_start = omp_get_wtime(), last_progress = t_start;
    int64_t fp = 0, j0 = 0;
    MPI_Comm_rank(comm, &r->rank);
    MPI_Comm_size(comm, &r->P);

    int rc = open_run(r, &sh, &b, &k, err);
    if (!rc) rc = replay_ckpt_begin(r, &sh, &b, &k, &fp, &j0, err); /* j0: first query still to do */
    kv_signals_install(); /* main.c did so before MPI_Init; here for other callers (tests) */
    if (!rc) rc = stop_at_start(r, j0, err);
    if (!rc) say_ready(r, j0);
    for (; !rc && j0 < r->m; j0 += r->B) {
        int64_t cnt = replay_min64(r->B, r->m - j0), done = j0 + cnt;
        /* every rank gets here each batch, failed or not; an error the walk
         * agreed on is already everybody's (batch.h) */
        replay_batch_partials(&b, r, &sh, j0, cnt, err);
        if ((rc = b.agreed ? err->code : kv_agree(comm, err))) break;
        if (b.stop) { rc = stop_inside(r, &sh, &b, &k, fp, j0, err); break; }
        if (!replay_batch_merge(&b, r, err) && r->rank == 0) replay_sink_batch(&k, r, &b, err);
        if ((rc = kv_agree(comm, err))) break;
        replay_progress(r, done, kv_trace_query_pos(r->tr)[done - 1], t_start, &last_progress);
        rc = stop_or_checkpoint(r, &sh, &b, &k, fp, j0, done, err);
    }
    if (!rc) { /* the rest of the shard (the last memory epoch): memory and ingest figures cover the whole trace */
        if (!replay_batch_tail(&b, r, &sh, err)) rc = kv_agree(comm, err);
        else rc = err->code;
    }
    if (!rc) {
        replay_summary(r, &k, t_start, res, err);
        if (!err->code && o->on_results && res && k.res) o->on_results(o->ctx, k.res, res, err); /* rank 0 */
        replay_sink_close(&k, err); /* closing flushes: its failure must reach every rank */
        kv_agree(comm, err);
    }
    replay_sink_free(&k); /* closes the results file if an error came first */
    replay_batch_free(&b);
    replay_shard_free(&sh);
    replay_instances_free(r);
    if (r->tr) kv_trace_close(r->tr);
    return err->code;
}
