/* ckptstate.c - replay checkpoint contents (see ckptstate.h), written and
 * read in bounded pieces.  The byte layout is the checkpoint format: change
 * it only with CK_MAGIC. */
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"
#include "core/rng.h"
#include "core/signals.h"
#include "io/ckpt.h"
#include "kernels/partial.h"
#include "mpi/agree.h"
#include "replay/ckptstate.h"
#include "replay/decide.h"
#include "replay/cost.h"
#include "replay/instances.h"

#define CK_MAGIC INT64_C(0x4b56434b50543035) /* "KVCKPT05": 02 added the memory epochs' maximum, 03 the walk
                                                * inside a batch and exact rebuilt from the trace, 04 the
                                                * quantised caches' checksum taken in pieces, 05 the output
                                                * norm ratios and the prefixes' sums of |v|^2 */

/* The piece: the most bytes a rank holds of its state while writing or
 * reading a checkpoint.  KVSTREAM_CKPT_PIECE overrides it (for tests: a
 * tiny piece exercises every piece boundary). */
#define CK_PIECE ((size_t)4 << 20)

static int piece_bytes(size_t *piece, kv_err *err)
{
    const char *e = getenv("KVSTREAM_CKPT_PIECE");
    *piece = CK_PIECE;
    if (!e || !*e) return KV_OK;
    char *end;
    unsigned long long v = strtoull(e, &end, 10);
    if (*end || e[0] == '-' || v < 1 || v > ((unsigned long long)1 << 40))
        return kv_seterr(err, KV_EINPUT, "KVSTREAM_CKPT_PIECE: '%s' is not a whole number of bytes from 1 to 2^40", e);
    *piece = (size_t)v;
    return KV_OK;
}

/* exact's state is the rank's tokens below the shard position, in the
 * blocks the walk cut: the checkpoint records only how many it held, and
 * --resume re-reads them from the trace (the trace is checked by its
 * fingerprint).  Other methods save their state (method.h). */
/* checkpointed as a token count and rebuilt from the trace (method.h) */
static int rebuilt(const replay_instance *x) { return x->ops->prefix_state; }

/* Identifies the trace: shape, scale, query positions and its first rows. */
static int64_t fingerprint(const replay *r, kv_err *err)
{
    uint64_t h = kv_hash4((uint64_t)r->S, (uint64_t)r->n, (uint64_t)r->m, (uint64_t)(r->d << 20 | r->dv));
    double sc = r->in->scale;
    uint64_t bits;
    memcpy(&bits, &sc, sizeof bits);
    h = kv_hash4(h, bits, 0, 0);
    const int64_t *pos = kv_trace_query_pos(r->tr);
    for (int64_t j = 0; j < r->m; j++) h = kv_hash4(h, (uint64_t)pos[j], (uint64_t)j, 1);
    int64_t cnt = replay_min64(r->n, 16);
    float *K = kv_malloc(sizeof(float) * (size_t)(r->S * cnt * r->d), err);
    float *V = kv_malloc(sizeof(float) * (size_t)(r->S * cnt * r->dv), err);
    if (K && V && !kv_trace_read_kv(r->tr, 0, cnt, K, V, err)) {
        for (int64_t i = 0; i < r->S * cnt * r->d; i++) { uint32_t b; memcpy(&b, &K[i], 4); h = kv_hash4(h, b, (uint64_t)i, 2); }
        for (int64_t i = 0; i < r->S * cnt * r->dv; i++) { uint32_t b; memcpy(&b, &V[i], 4); h = kv_hash4(h, b, (uint64_t)i, 3); }
    }
    free(K);
    free(V);
    return (int64_t)(h & INT64_MAX);
}

static void fill_meta(const replay *r, kv_ckpt_meta *m, int64_t fp, int64_t next)
{
    const kv_replay_opts *o = r->o;
    memset(m, 0, sizeof *m);
    snprintf(m->trace, sizeof m->trace, "%s", o->trace);
    snprintf(m->methods, sizeof m->methods, "%s", o->methods);
    snprintf(m->semantics, sizeof m->semantics, "%s", o->semantics == KV_SEM_FULL ? "full" : "window-unmasked-values");
    snprintf(m->out, sizeof m->out, "%s", o->out ? o->out : "");
    m->ranks = r->P; m->S = r->S; m->n = r->n; m->m = r->m; m->d = r->d; m->dv = r->dv;
    m->seed = (int64_t)(o->seed & INT64_MAX); m->window = o->window; m->batch = o->batch;
    m->shard_chunk = r->C; m->bound_ratio = o->bound_ratio; m->fingerprint = fp; m->next_query = next;
    m->reference = o->reference;
}

/* The walk of a batch stopped inside it (batch.h): how far it went and
 * what it built; bounded by the batch size, not the trace. */
static void save_walk(const replay *r, const replay_batch *bt, kv_buf *b)
{
    kv_buf_put_i64(b, bt->walked);
    if (bt->walked <= 0) return;
    kv_buf_put_i64(b, bt->nu);
    kv_buf_put_i64(b, bt->staged);
    kv_buf_put_i64(b, bt->u0);
    size_t sl = KV_PSTATE_LEN(r->dv), gl = (size_t)(r->dv * r->dv);
    kv_buf_put_arr(b, bt->uidx, sizeof(int64_t) * (size_t)bt->walked);
    kv_buf_put_arr(b, bt->ep, sizeof(int64_t) * (size_t)(bt->nu * r->M));
    kv_buf_put_arr(b, bt->send, sizeof(double) * (size_t)(r->M * r->S * bt->cnt) * sl);
    kv_buf_put_arr(b, bt->cost, sizeof(double) * (size_t)(r->M * r->S * bt->cnt) * REPLAY_COST_LEN);
    if (bt->gsend) kv_buf_put_arr(b, bt->gsend, sizeof(double) * (size_t)(bt->staged * r->S) * gl);
    if (bt->opn && r->rank == 0) kv_buf_put_arr(b, bt->opn, sizeof(double) * (size_t)(bt->u0 * r->S));
    if (bt->vsq && r->rank == 0) kv_buf_put_arr(b, bt->vsq, sizeof(double) * (size_t)(bt->u0 * r->S));
}

/* this rank's state: methods, shard position, V^T V, and on rank 0 the
 * metrics, the Lanczos start vectors and the memory maximum so far.  Into a
 * counting b it fills lens [M][S] (each saved method state's length, -1:
 * rebuilt); into any other b it writes with those lengths, and checks them. */
static int save_state(const replay *r, const replay_shard *sh, const replay_batch *bt, const replay_sink *k, kv_buf *b,
                      int64_t *lens, kv_err *err)
{
    kv_buf_put_i64(b, CK_MAGIC);
    kv_buf_put_i64(b, sh->cur);
    save_walk(r, bt, b);
    for (int mi = 0; mi < r->M; mi++) {
        const replay_instance *x = &r->inst[mi];
        if (!x->ops->save) return kv_seterr(err, KV_EINPUT, "--checkpoint: method '%s' cannot be checkpointed", x->spec.text);
        kv_buf_put_i64(b, x->peak);
        kv_buf_put_f64(b, x->t_ingest);
        kv_buf_put_f64(b, x->t_query);
        for (int64_t s = 0; s < r->S && rebuilt(x); s++) {
            kv_method_extra e = { -1, -1, 0 };
            x->ops->extra(x->st[s], &e);
            kv_buf_put_i64(b, e.kept_tokens);
        }
        for (int64_t s = 0; s < r->S && !rebuilt(x); s++) {
            /* as kv_buf_put_arr would write it (length, then bytes), saved
             * straight into b: the length is the counting pass's */
            int64_t *len = &lens[mi * r->S + s];
            kv_buf_put_i64(b, b->count_only ? 0 : *len);
            size_t at = b->total;
            x->ops->save(x->st[s], b);
            if (b->failed)
                return kv_seterr(err, KV_EINTERNAL, "checkpoint: method '%s' could not save its state (out of memory, "
                                 "a part of it cannot be checkpointed, or the file could not be written)", x->spec.text);
            int64_t n = (int64_t)(b->total - at);
            if (b->count_only) *len = n;
            else if (n != *len)
                return kv_seterr(err, KV_EINTERNAL, "checkpoint: method '%s' saved %lld bytes of stream %lld, counted "
                                 "%lld (its save is not deterministic)", x->spec.text, (long long)n, (long long)s,
                                 (long long)*len);
        }
    }
    if (sh->gram) kv_buf_put_arr(b, sh->gram, r->z.gram);
    if (r->rank == 0) {
        kv_buf_put_arr(b, k->rel, r->z.rel);
        kv_buf_put_arr(b, k->bound, r->z.bound);
        kv_buf_put_arr(b, k->rtok, r->z.rtok);
        kv_buf_put_arr(b, k->onr, r->z.onr);
        kv_buf_put_arr(b, k->csum, sizeof(double) * REPLAY_COST_LEN * (size_t)r->M);
        kv_buf_put_arr(b, bt->ev, r->z.ev);
        kv_buf_put_arr(b, k->mem_peak, sizeof(int64_t) * (size_t)r->M);
        kv_buf_put_f64(b, k->model_max);
        kv_buf_put_f64(b, k->model_sum);
        kv_buf_put_i64(b, k->model_cnt);
    }
    if (b->failed) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    return KV_OK;
}

/* an array of kv_buf_put_arr of exactly `bytes` bytes, read straight into dst */
static int load_array(kv_rd *rd, void *dst, size_t bytes, kv_err *err)
{
    int64_t n;
    if (kv_rd_i64(rd, &n, err)) return err->code;
    if (n < 0 || (uint64_t)n != bytes) return kv_seterr(err, KV_EINPUT, "checkpoint: %s has the wrong size", rd->what);
    return kv_rd_get(rd, dst, bytes, err);
}

/* save_walk's counterpart: the batch from query next, walked so far.  The
 * counts must fit the batch and each other (u0 + staged = nu when V^T V is
 * staged, every query's position index below nu). */
static int load_walk(replay *r, replay_batch *bt, kv_rd *rd, int64_t next, kv_err *err)
{
    int64_t w, nu = 0, staged = 0, u0 = 0, cnt = replay_min64(r->B, r->m - next);
    rd->what = "the batch walk";
    if (kv_rd_i64(rd, &w, err)) return err->code;
    if (w == 0) return KV_OK;
    if (kv_rd_i64(rd, &nu, err) || kv_rd_i64(rd, &staged, err) || kv_rd_i64(rd, &u0, err)) return err->code;
    int bad = w < 0 || w >= cnt || nu < 1 || nu > w || staged < 0 || u0 < 0 ||
              (bt->gsend ? staged > bt->G || u0 + staged != nu : staged || u0);
    if (bad) return kv_seterr(err, KV_EINPUT, "checkpoint: the batch walk is corrupt");
    size_t sl = KV_PSTATE_LEN(r->dv), gl = (size_t)(r->dv * r->dv);
    bt->j0 = next; bt->cnt = cnt; bt->walked = w; bt->nu = nu; bt->staged = staged; bt->u0 = u0;
    if (load_array(rd, bt->uidx, sizeof(int64_t) * (size_t)w, err) ||
        load_array(rd, bt->ep, sizeof(int64_t) * (size_t)(nu * r->M), err) ||
        load_array(rd, bt->send, sizeof(double) * (size_t)(r->M * r->S * cnt) * sl, err) ||
        load_array(rd, bt->cost, sizeof(double) * (size_t)(r->M * r->S * cnt) * REPLAY_COST_LEN, err))
        return err->code;
    if (bt->gsend && load_array(rd, bt->gsend, sizeof(double) * (size_t)(staged * r->S) * gl, err)) return err->code;
    if (bt->opn && r->rank == 0 && load_array(rd, bt->opn, sizeof(double) * (size_t)(u0 * r->S), err)) return err->code;
    if (bt->vsq && r->rank == 0 && load_array(rd, bt->vsq, sizeof(double) * (size_t)(u0 * r->S), err)) return err->code;
    for (int64_t q = 0; q < w; q++)
        if (bt->uidx[q] < 0 || bt->uidx[q] >= nu) return kv_seterr(err, KV_EINPUT, "checkpoint: the batch walk is corrupt");
    return KV_OK;
}

/* kept [M][S]: the token counts of the rebuilt instances (-1: others) */
static int load_methods(replay *r, kv_rd *rd, int64_t *kept, kv_err *err)
{
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        if (!x->ops->load) return kv_seterr(err, KV_EINPUT, "--resume: method '%s' cannot be checkpointed", x->spec.text);
        if (kv_rd_i64(rd, &x->peak, err) || kv_rd_f64(rd, &x->t_ingest, err) || kv_rd_f64(rd, &x->t_query, err))
            return err->code;
        for (int64_t s = 0; s < r->S; s++) {
            kept[mi * r->S + s] = -1;
            if (rebuilt(x) && kv_rd_i64(rd, &kept[mi * r->S + s], err)) return err->code;
        }
        for (int64_t s = 0; s < r->S && !rebuilt(x); s++) {
            int64_t n;
            kv_rd one;
            if (kv_rd_i64(rd, &n, err)) return err->code;
            if (n < 0 || (size_t)n > rd->len - rd->pos) return kv_seterr(err, KV_EINPUT, "checkpoint: method state is truncated");
            if (kv_rd_sub(rd, (size_t)n, &one, err)) return err->code; /* a view of its bytes, read as it goes */
            one.what = x->spec.method;
            if (x->ops->load(x->st[s], &one, err)) return err->code;
            if (one.pos != one.len)
                return kv_seterr(err, KV_EINPUT, "checkpoint: method '%s' state has trailing bytes", x->spec.text);
        }
        x->epoch = x->dsub = replay_instance_bytes(x, r->S); /* checkpoints fall between memory epochs */
        x->dpeak = 0;
    }
    return KV_OK;
}

static int load_state(replay *r, replay_shard *sh, replay_batch *bt, replay_sink *k, kv_rd rd, int64_t next,
                      int64_t *kept, kv_err *err)
{
    int64_t magic, cur;
    if (kv_rd_i64(&rd, &magic, err) || kv_rd_i64(&rd, &cur, err)) return err->code;
    if (magic != CK_MAGIC || cur < 0 || cur > r->n) return kv_seterr(err, KV_EINPUT, "checkpoint: replay state is corrupt");
    sh->cur = cur;
    if (load_walk(r, bt, &rd, next, err)) return err->code;
    if (load_methods(r, &rd, kept, err)) return err->code;
    rd.what = "V^T V";
    if (sh->gram && load_array(&rd, sh->gram, r->z.gram, err)) return err->code;
    if (r->rank == 0) {
        rd.what = "the metrics";
        if (load_array(&rd, k->rel, r->z.rel, err) || load_array(&rd, k->bound, r->z.bound, err) ||
            load_array(&rd, k->rtok, r->z.rtok, err) || load_array(&rd, k->onr, r->z.onr, err) ||
            load_array(&rd, k->csum, sizeof(double) * REPLAY_COST_LEN * (size_t)r->M, err) ||
            load_array(&rd, bt->ev, r->z.ev, err) ||
            load_array(&rd, k->mem_peak, sizeof(int64_t) * (size_t)r->M, err) ||
            kv_rd_f64(&rd, &k->model_max, err) || kv_rd_f64(&rd, &k->model_sum, err) || kv_rd_i64(&rd, &k->model_cnt, err))
            return err->code;
    }
    if (rd.pos != rd.len) return kv_seterr(err, KV_EINPUT, "checkpoint: replay state has trailing bytes");
    return KV_OK;
}

/* The rebuilt instances (prefix_state: exact, topk, window, sinks) from the
 * trace: the walk's positions of queries [0, upto) again, with the same
 * horizon calls and ingest blocks, feeding only them; then the shard
 * position and every count must be the checkpoint's. */
static int rebuild(replay *r, replay_shard *sh, int64_t upto, const int64_t *kept, kv_err *err)
{
    char *only = kv_calloc((size_t)r->M, 1, err);
    if (!only) return err->code;
    int any = 0;
    for (int mi = 0; mi < r->M; mi++) any |= only[mi] = (char)rebuilt(&r->inst[mi]);
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
    free(only);
    return err->code;
}

static int ck_fill(void *ctx, void *dst, size_t n, size_t at, kv_err *err) { return kv_ckpt_get(ctx, dst, n, at, err); }

struct piece_sink {
    kv_ckpt_writer *w;
    kv_err *err;
};

/* a full piece of the bounded buffer goes to its place in /state */
static int put_piece(void *ctx, const void *p, size_t n, size_t at)
{
    struct piece_sink *ps = ctx;
    return kv_ckpt_put(ps->w, p, n, at, ps->err) != KV_OK;
}

int replay_ckpt_begin(replay *r, replay_shard *sh, replay_batch *bt, replay_sink *k, int64_t *fp, int64_t *next,
                      kv_err *err)
{
    const kv_replay_opts *o = r->o;
    size_t piece = CK_PIECE;
    *fp = (o->checkpoint || o->resume) && !piece_bytes(&piece, err) ? fingerprint(r, err) : 0;
    *next = 0;
    if (kv_agree(r->comm, err) || !o->resume) return err->code;
    kv_ckpt_meta want, got;
    kv_ckpt_reader *cr = NULL;
    size_t len = 0;
    fill_meta(r, &want, *fp, 0);
    int64_t *kept = kv_calloc((size_t)(r->M * r->S), sizeof(int64_t), err);
    if (kept && !kv_ckpt_open(o->resume, r->comm, &want, &got, &cr, &len, err)) {
        /* the state is read a piece at a time into one window */
        kv_rd_src src;
        if (!kv_rd_src_init(&src, len, piece, ck_fill, cr, err)) {
            load_state(r, sh, bt, k, kv_rd_of_src(&src, "the replay"), got.next_query, kept, err);
            kv_rd_src_free(&src);
        }
        kv_ckpt_close(cr);
        if (!err->code) rebuild(r, sh, got.next_query + bt->walked, kept, err);
        *next = got.next_query;
    }
    free(kept);
    if (!err->code && r->rank == 0) replay_sink_reopen(k, r, err);
    return kv_agree(r->comm, err);
}

int replay_ckpt_write(const replay *r, const replay_shard *sh, const replay_batch *bt, replay_sink *k, int64_t fp,
                      int64_t next, kv_err *err)
{
    /* pass 1 counts: this rank's total and each method state's length */
    size_t piece = CK_PIECE;
    kv_buf c;
    kv_buf_init_count(&c);
    int64_t *lens = kv_calloc((size_t)(r->M * r->S), sizeof(int64_t), err);
    if (lens && !piece_bytes(&piece, err)) save_state(r, sh, bt, k, &c, lens, err);
    if (!err->code && k->res) kv_results_flush(k->res, err); /* rows < next are durable */
    kv_ckpt_writer *w = NULL;
    if (kv_agree(r->comm, err) || kv_ckpt_create(r->o->checkpoint, r->comm, c.total, &w, err)) {
        free(lens);
        return kv_agree(r->comm, err);
    }
    /* pass 2 saves again, each full piece written at its offset */
    struct piece_sink ps = { w, err };
    kv_buf b;
    kv_buf_init_bounded(&b, piece, put_piece, &ps);
    save_state(r, sh, bt, k, &b, lens, err);
    kv_buf_flush(&b);
    if (b.failed) kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    if (!err->code && b.total != c.total)
        kv_seterr(err, KV_EINTERNAL, "checkpoint: the state took %zu bytes, counted %zu", b.total, c.total);
    kv_buf_free(&b);
    kv_ckpt_meta m;
    fill_meta(r, &m, fp, next);
    kv_ckpt_finish(w, &m, err->code != KV_OK, err);
    free(lens);
    return kv_agree(r->comm, err);
}
