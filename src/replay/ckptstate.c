/* ckptstate.c - replay checkpoint framing (see ckptstate.h): the run's
 * identity, the magic, the order of the stages' own bytes, the two-pass
 * bounded write and the windowed read.  The byte layout is the checkpoint
 * format: change it (here or in a stage's save) only with CK_MAGIC. */
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"
#include "core/rng.h"
#include "io/ckpt.h"
#include "mpi/agree.h"
#include "replay/ckptstate.h"
#include "replay/instances.h"

#define CK_MAGIC INT64_C(0x4b56434b50543036) /* "KVCKPT06": 02 added the memory epochs' maximum, 03 the walk
                                                * inside a batch and exact rebuilt from the trace, 04 the
                                                * quantised caches' checksum taken in pieces, 05 each stage's
                                                * own bytes, a batch's only what it answered, the output
                                                * norm ratios and the prefixes' sums of |v|^2, 06 kivi's
                                                * key codes in the word layout (kernels/qattn.h) */

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

/* This rank's state, framed: the magic, then each stage's own bytes (the
 * stage's save/load beside its struct).  Into a counting b it fills lens
 * [M][S] (replay_instances_save); into any other b it writes with them. */
static int save_state(const replay *r, const replay_shard *sh, const replay_batch *bt, const replay_sink *k, kv_buf *b,
                      int64_t *lens, kv_err *err)
{
    kv_buf_put_i64(b, CK_MAGIC);
    replay_shard_save(sh, r, b);
    replay_batch_save(bt, r, b);
    if (replay_instances_save(r, b, lens, err)) return err->code;
    replay_sink_save(k, r, b);
    if (b->failed) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    return KV_OK;
}

static int load_state(replay *r, replay_shard *sh, replay_batch *bt, replay_sink *k, kv_rd rd, int64_t next,
                      int64_t *kept, kv_err *err)
{
    int64_t magic;
    if (kv_rd_i64(&rd, &magic, err)) return err->code;
    if (magic != CK_MAGIC) return kv_seterr(err, KV_EINPUT, "checkpoint: replay state is corrupt (or of another version)");
    if (replay_shard_load(sh, r, &rd, err) || replay_batch_load(bt, r, &rd, next, err) ||
        replay_instances_load(r, &rd, kept, err) || replay_sink_load(k, r, &rd, err))
        return err->code;
    if (rd.pos != rd.len) return kv_seterr(err, KV_EINPUT, "checkpoint: replay state has trailing bytes");
    return KV_OK;
}

/* --resume: the prefix_state instances fed again from the trace (shard.h) */
static int rebuild(replay *r, replay_shard *sh, int64_t upto, const int64_t *kept, kv_err *err)
{
    char *only = kv_calloc((size_t)r->M, 1, err);
    if (!only) return err->code;
    for (int mi = 0; mi < r->M; mi++) only[mi] = (char)replay_instance_rebuilt(&r->inst[mi]);
    replay_shard_restore(sh, r, only, upto, kept, err);
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
