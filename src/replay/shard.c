/* shard.c - the rank's shard walk (see shard.h). */
#include <omp.h>
#include <stdlib.h>
#include "core/signals.h"
#include "replay/decide.h"
#include "replay/instances.h"
#include "replay/shard.h"

int replay_shard_new(replay_shard *sh, const replay *r, kv_err *err)
{
    *sh = (replay_shard){ .cur = replay_min64((int64_t)r->rank * r->C, r->n), .loaded = -1 };
    sh->K = kv_malloc(r->z.kstage, err);
    sh->V = kv_malloc(r->z.vstage, err);
    if (r->z.gram) sh->gram = kv_calloc(r->z.gram / sizeof(double), sizeof(double), err);
    return err->code;
}

void replay_shard_free(replay_shard *sh)
{
    free(sh->K);
    free(sh->V);
    free(sh->gram);
    *sh = (replay_shard){ .loaded = -1 };
}

int64_t replay_shard_tokens(const replay *r)
{
    int64_t t = 0;
    for (int64_t c = r->rank; c * r->C < r->n; c += r->P) t += replay_min64(r->C, r->n - c * r->C);
    return t;
}

static void gram_update(double *G, int dv, const float *V, int64_t cnt)
{
    for (int64_t t = 0; t < cnt; t++) {
        const float *v = V + t * dv;
        for (int i = 0; i < dv; i++) {
            double vi = v[i];
            double *row = G + (size_t)i * dv;
#pragma omp simd
            for (int j = i; j < dv; j++) row[j] += vi * v[j];
        }
    }
}

/* Tokens [cur, cur + len) of the staged chunk (they start `off` into it)
 * into every instance, or (only != NULL: a rebuild) into the instances
 * with only[mi] set, without V^T V, timers or memory samples. */
static int ingest_block(replay_shard *sh, replay *r, int64_t off, int64_t len, const char *only, kv_err *err)
{
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        if ((only && !only[mi]) || x->streamed) continue; /* streamed: its tokens stay in the trace */
        int bad = 0;
        double t0 = omp_get_wtime();
#pragma omp parallel for schedule(dynamic) if (r->par_streams) reduction(| : bad)
        for (int64_t s = 0; s < r->S; s++) {
            kv_err e = { 0, "" };
            const float *K = sh->K + (s * sh->loaded_cnt + off) * r->d;
            const float *V = sh->V + (s * sh->loaded_cnt + off) * r->dv;
            if (x->ops->ingest(x->st[s], K, V, sh->cur, (size_t)len, &e)) {
#pragma omp critical(kv_replay_err)
                kv_seterr(err, e.code, "%s", e.msg);
                bad = 1;
            }
        }
        if (bad) return err->code;
        if (only) continue;
        x->t_ingest += omp_get_wtime() - t0;
        replay_instance_sample(x, r->S);
    }
    if (sh->gram && !only) {
        int dv = (int)r->dv;
#pragma omp parallel for schedule(static) if (r->par_streams)
        for (int64_t s = 0; s < r->S; s++)
            gram_update(sh->gram + (size_t)s * dv * dv, dv, sh->V + (s * sh->loaded_cnt + off) * dv, len);
    }
    return KV_OK;
}

/* method.h: horizon.  Every instance hears that no later query is below p.
 * The memory epoch of position p starts after the drop: what was held
 * before it is the state the previous epoch ended with, counted there, and
 * starting from it would add one rank's old window to another's new one. */
static void horizon(replay *r, int64_t p, const char *only)
{
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        if (!x->ops->horizon || (only && !only[mi]) || x->streamed) continue;
#pragma omp parallel for schedule(static) if (r->par_streams)
        for (int64_t s = 0; s < r->S; s++) x->ops->horizon(x->st[s], p);
        if (!only) x->epoch = replay_instance_bytes(x, r->S); /* a rebuild sets it at its end */
    }
}

/* The walk to p: the same blocks whoever is fed (only: see ingest_block). */
static int walk_to(replay_shard *sh, replay *r, int64_t p, const char *only, kv_err *err)
{
    while (sh->cur < p && sh->cur < r->n) {
        int64_t c = sh->cur / r->C, c0 = c * r->C;
        if (c != sh->loaded) {
            sh->loaded_cnt = replay_min64(r->C, r->n - c0);
            if (kv_trace_read_kv(r->tr, c0, sh->loaded_cnt, sh->K, sh->V, err)) return err->code;
            sh->loaded = c;
        }
        int64_t end = replay_min64(c0 + sh->loaded_cnt, p);
        if (ingest_block(sh, r, sh->cur - c0, end - sh->cur, only, err)) return err->code;
        sh->cur = end;
        if (sh->cur == c0 + sh->loaded_cnt) sh->cur = replay_min64((c + r->P) * r->C, r->n); /* next owned chunk */
    }
    return KV_OK;
}

int replay_shard_advance(replay_shard *sh, replay *r, int64_t p, kv_err *err)
{
    horizon(r, p, NULL);
    return walk_to(sh, r, p, NULL, err);
}

int replay_shard_ingest_to(replay_shard *sh, replay *r, int64_t x, kv_err *err)
{
    return walk_to(sh, r, x, NULL, err);
}

int replay_shard_rebuild_ingest(replay_shard *sh, replay *r, const char *only, int64_t x, kv_err *err)
{
    return walk_to(sh, r, x, only, err);
}

int replay_shard_rebuild(replay_shard *sh, replay *r, const char *only, int64_t p, kv_err *err)
{
    horizon(r, p, only); /* the run's horizon(p), for the rebuilt ones only */
    return walk_to(sh, r, p, only, err);
}

void replay_shard_save(const replay_shard *sh, const replay *r, kv_buf *out)
{
    kv_buf_put_i64(out, sh->cur);
    if (sh->gram) kv_buf_put_arr(out, sh->gram, r->z.gram);
}

int replay_shard_load(replay_shard *sh, const replay *r, kv_rd *rd, kv_err *err)
{
    int64_t cur;
    rd->what = "the shard";
    if (kv_rd_i64(rd, &cur, err)) return err->code;
    if (cur < 0 || cur > r->n) return kv_seterr(err, KV_EINPUT, "checkpoint: the shard position is corrupt");
    sh->cur = cur;
    rd->what = "V^T V";
    return sh->gram ? kv_rd_arr_to(rd, sh->gram, r->z.gram, err) : KV_OK;
}

/* shard.h: the rebuilt instances fed again from the trace */
int replay_shard_restore(replay_shard *sh, replay *r, const char *only, int64_t upto, const int64_t *kept, kv_err *err)
{
    int any = 0;
    for (int mi = 0; mi < r->M; mi++) any |= only[mi];
    int64_t cur = sh->cur;
    const int64_t *pos = kv_trace_query_pos(r->tr);
    sh->cur = replay_min64((int64_t)r->rank * r->C, r->n);
    sh->loaded = -1;
    for (int64_t j = 0; any && j < upto && !err->code; j++) {
        if (j == 0 || pos[j] != pos[j - 1]) {
            /* the same ingest blocks as the run: cut at the deciding methods' points too (decide.h) */
            for (int64_t x = replay_decide_next(r, j ? pos[j - 1] : 0); x < pos[j] && !err->code;
                 x = replay_decide_next(r, x))
                replay_shard_rebuild_ingest(sh, r, only, x, err);
            if (!err->code) replay_shard_rebuild(sh, r, only, pos[j], err);
        }
        /* a long scan: a stop ends it here (no collective inside; agreed by the caller) */
        if (!err->code && kv_signal_pending())
            kv_seterr(err, KV_ESTOPPED, "stopped by signal %d during start-up, rebuilding the checkpoint's state from "
                      "the trace; checkpoint %s unchanged (continue with --resume %s)", kv_signal_pending(),
                      r->o->resume, r->o->resume);
    }
    if (!err->code && any && sh->cur != cur)
        kv_seterr(err, KV_EINPUT, "checkpoint: shard position %lld does not match its queries (corrupt)", (long long)cur);
    for (int mi = 0; mi < r->M && !err->code; mi++)
        for (int64_t s = 0; only[mi] && s < r->S && !err->code; s++) {
            kv_method_extra e = { -1, -1, 0 };
            r->inst[mi].ops->extra(r->inst[mi].st[s], &e);
            if (e.kept_tokens != kept[mi * r->S + s])
                kv_seterr(err, KV_EINPUT, "checkpoint: %s held %lld tokens of stream %lld, the trace gives %lld (corrupt "
                          "checkpoint or changed trace)", r->inst[mi].spec.label, (long long)kept[mi * r->S + s],
                          (long long)s, (long long)e.kept_tokens);
        }
    for (int mi = 0; mi < r->M; mi++)
        if (only[mi]) r->inst[mi].epoch = replay_instance_bytes(&r->inst[mi], r->S);
    sh->cur = cur;
    return err->code;
}

