/* batch.c - partial states of a batch and their merge (see batch.h). */
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/partial.h"
#include "mpi/coll.h"
#include "replay/batch.h"
#include "replay/instances.h"

int replay_batch_new(replay_batch *b, const replay *r, kv_err *err)
{
    *b = (replay_batch){ 0 };
    b->Q = kv_malloc(r->z.queries, err);
    b->send = kv_malloc(r->z.send, err);
    b->uidx = kv_malloc(r->z.uidx, err);
    if (r->z.recv) b->recv = kv_malloc(r->z.recv, err);
    if (r->z.gsend) b->gsend = kv_malloc(r->z.gsend, err);
    if (r->z.gsum) b->gsum = kv_malloc(r->z.gsum, err);
    if (err->code) return err->code;
    b->have_merge = kv_merge_init(&b->mg, (int)r->dv) == MPI_SUCCESS;
    if (!b->have_merge) return kv_seterr(err, KV_EINTERNAL, "cannot create the MPI merge operator");
    return KV_OK;
}

void replay_batch_free(replay_batch *b)
{
    if (b->have_merge) kv_merge_free(&b->mg);
    free(b->Q); free(b->send); free(b->recv); free(b->gsend); free(b->gsum); free(b->uidx);
    *b = (replay_batch){ 0 };
}

/* 1 if method mi answers a whole batch at once (method.h: partial_batch). */
static int batch_capable(const replay *r, int mi)
{
    return r->inst[mi].ops->partial_batch != NULL;
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
        bad |= (whole ? x->ops->partial_batch(x->st[s], Q, p, (int)g, st)
                      : x->ops->partial(x->st[s], Q, (int)g, p[0], st)) != KV_OK;
    }
    x->t_query += omp_get_wtime() - t0;
    /* what a method keeps from answering (scores, grown buffers) counts too */
    int64_t held = replay_instance_bytes(x, r->S);
    if (held > x->peak) x->peak = held;
    if (bad) kv_seterr(err, KV_EINTERNAL, "method %s: out of memory answering queries at prefixes %lld..%lld",
                       x->spec.label, (long long)p[0], (long long)p[g - 1]);
}

int replay_batch_partials(replay_batch *b, replay *r, replay_shard *sh, int64_t j0, int64_t cnt, kv_err *err)
{
    const int64_t *pos = kv_trace_query_pos(r->tr);
    size_t gl = (size_t)(r->dv * r->dv);
    b->j0 = j0;
    b->cnt = cnt;
    b->nu = 0;
    if (!err->code) kv_trace_read_queries(r->tr, j0, cnt, b->Q, err);
    /* the shard walks prefix by prefix whatever the methods: ingest blocks,
     * the per-prefix methods' calls and the V^T V snapshots stay as they are */
    for (int64_t jj = 0; jj < cnt && !err->code;) {
        int64_t p = pos[j0 + jj], g = 1;
        while (jj + g < cnt && pos[j0 + jj + g] == p) g++; /* queries sharing a prefix */
        if (replay_shard_advance(sh, r, p, err)) break;
        for (int mi = 0; mi < r->M; mi++)
            if (!batch_capable(r, mi)) answer(b, r, mi, jj, g, pos + j0 + jj, err);
        if (sh->gram) {
            for (int64_t s = 0; s < r->S; s++)
                memcpy(b->gsend + ((size_t)b->nu * r->S + s) * gl, sh->gram + (size_t)s * gl, sizeof(double) * gl);
        }
        for (int64_t q = 0; q < g; q++) b->uidx[jj + q] = b->nu;
        b->nu++;
        jj += g;
    }
    /* batch-capable methods see only tokens < their query's prefix, so
     * answering after the walk gives what answering inside it would */
    for (int mi = 0; mi < r->M && !err->code && cnt > 0; mi++)
        if (batch_capable(r, mi)) answer(b, r, mi, 0, cnt, pos + j0, err);
    return err->code;
}

int replay_batch_merge(replay_batch *b, const replay *r, kv_err *err)
{
    /* both run on every rank: all ranks agreed just before, so no rank skips one */
    size_t count = (size_t)(r->M * r->S * b->cnt);
    if (kv_merge_reduce(&b->mg, b->send, b->recv, count, 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Reduce of partial states failed");
    size_t gl = (size_t)(r->dv * r->dv);
    if (b->gsend && kv_mpi_reduce_sum_f64(b->gsend, b->gsum, (size_t)b->nu * r->S * gl, 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Reduce of V^T V failed");
    return err->code;
}
