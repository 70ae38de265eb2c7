/* method.h - the one interface every attention method implements.
 *
 * A method instance summarises ONE stream on ONE rank.  The replay driver
 * (src/replay/: instances.c, shard.c, batch.c) creates one instance per
 * (method, stream) on every rank and
 * calls, in stream order:
 *     ingest(block of the rank's tokens)   any number of times
 *     partial(queries at prefix p)         when, and only when, the rank has
 *                                          ingested exactly its tokens < p
 * or, for a method offering partial_batch, once per batch of queries (after
 * the other methods' partial calls of that batch, see the hook below).
 * partial writes one partial state (src/kernels/partial.h) per query; the driver
 * merges states across ranks with the MPI reduction of mpi/merge.h.
 *
 * Parameters: each method file declares a table of its parameters
 * (core/spec.h: kv_param_def, with defaults, ranges and help) and its typed
 * config struct; kv_method_check_specs parses every spec once, before any
 * stream, into kv_spec.cfg, and create() reads the config with
 * kv_method_cfg (which parses then only if nobody did).
 *
 * Adding a method = one file src/methods/<name>.c defining a kv_method_ops
 * (with its table and config struct), plus one line in
 * src/methods/registry.c. */
#ifndef KVSTREAM_METHOD_H
#define KVSTREAM_METHOD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "core/buf.h"
#include "core/kverr.h"
#include "core/spec.h"

/* What a replay computes (ALGORITHMS.md section 3). */
typedef enum {
    KV_SEM_FULL = 0,           /* ordinary causal softmax attention */
    KV_SEM_WINDOW_UNMASKED = 1 /* logits outside the last W tokens set to 0 */
} kv_semantics;

typedef struct {
    int d, dv;          /* key and value dimension */
    double scale;       /* logit scale (trace attribute or 1/sqrt(d)) */
    int64_t n_total;    /* tokens in the whole stream (all ranks) */
    int64_t stream;     /* stream index s */
    int rank, nranks;   /* this rank and the communicator size */
    int64_t shard_tokens; /* tokens of the stream this rank will see (0: unknown) */
    int64_t chunk;      /* the driver's shard chunk C: rank r holds chunks r, r + P, ... (0: unknown) */
    uint64_t seed;      /* replay --seed; methods mix in stream and rank */
    kv_semantics semantics;
    int64_t window;     /* W for KV_SEM_WINDOW_UNMASKED */
} kv_method_ctx;

/* Extra per-instance figures; a method leaves what it lacks at -1. */
typedef struct {
    int64_t clusters;     /* SubGen-style sketches: clusters held */
    int64_t kept_tokens;  /* tokens whose key/value is held */
} kv_method_extra;

/* What a method's answers read and computed, cumulative since create (or
 * load): the driver takes the difference around each answering call
 * (partial, partial_batch, partial_select), so the counters need not be
 * checkpointed.  Metadata scanned to decide what to read (page bounds, hash
 * tables) counts as read. */
typedef struct {
    double read_bytes;  /* bytes of the state read */
    double read_tokens; /* tokens whose key or value (or its code) was read */
    double flops;       /* floating-point operations, an FMA counting 2 */
} kv_query_cost;

typedef struct kv_method_ops {
    const char *name;    /* as written in --methods */
    const char *kind;    /* `kvstream methods` groups by it: exact, eviction, sampling, sketch, oracle, quantisation */
    const char *summary; /* one line */
    const char *budget;  /* what bounds its memory, one line; NULL: no budget (holds every token) */
    /* Parameter table (ends with KV_PARAM_TABLE_END; NULL: none but name=)
     * over the method's config struct of cfg_size <= KV_CFG_MAX bytes. */
    const kv_param_def *params;
    size_t cfg_size;
    /* May be NULL: rules across parameters and derived defaults, on the
     * config just filled from the table (no ctx: the config must not depend
     * on the stream).  Errors through kv_params_error. */
    int (*check)(void *cfg, const kv_spec *spec, kv_err *err);
    /* Allocate the state from the config (kv_method_cfg(ops, spec, err)) and
     * ctx; checks that need ctx (semantics, dimensions) belong here. */
    int (*create)(kv_spec *spec, const kv_method_ctx *ctx, void **state, kv_err *err);
    /* n tokens with global indices first .. first+n-1 (K: n x d, V: n x dv,
     * row-major).  The buffers are reused after the call: copy what you keep. */
    int (*ingest)(void *state, const float *K, const float *V, int64_t first,
                  size_t n, kv_err *err);
    /* nq queries (Q: nq x d) at prefix length p -> nq states of
     * KV_PSTATE_LEN(dv) doubles.  A method may update internal statistics
     * here (H2O's attention scores), but deterministically and never
     * depending on the order of the queries within one call.  Returns
     * KV_OK, or KV_EINTERNAL when scratch memory cannot be had (the driver
     * names the method in the message). */
    int (*partial)(void *state, const float *Q, int nq, int64_t p, double *st);
    /* Optional (NULL: the driver uses partial, one prefix at a time).
     * Multi-position batch: nq queries (Q: nq x d) at prefixes p[0] <= p[1]
     * <= ... <= p[nq - 1] -> nq states, in one call.  The state has ingested
     * exactly the rank's tokens < p[nq - 1]; query i must see only the
     * tokens < p[i], and its state must be what partial would give at p[i]
     * (up to float rounding), so one pass over the held tokens serves every
     * prefix.  Only for methods whose answer is a function of the held
     * prefix and the query, not of the call order or of other calls: exact
     * and topk may offer it; h2o may not (its scores update per partial
     * call), nor anything whose state depends on when it was queried.  The
     * driver calls it for the whole batch after the batch's partial calls
     * of the other methods (replay/batch.c), with the same ingest.  Same
     * return codes as partial. */
    int (*partial_batch)(void *state, const float *Q, const int64_t *p, int nq, double *st);
    /* Optional (NULL: not called).  The driver's promise that every later
     * query has prefix >= p.  Called on every rank, for every distinct query
     * position p in order, before the rank ingests its tokens < p (so also
     * when it has none to ingest), and once with p = n_total after the last
     * query.  A method that only ever looks at [p - W, p) drops here what no
     * later query can see, so that the ranks together hold W tokens at every
     * prefix however the stream is sharded (window, sinks). */
    void (*horizon)(void *state, int64_t p);
    /* Optional: a method whose state update needs the global softmax of its
     * queries (H2O normalises attention scores by it).  After every partial
     * call (nq queries Q at prefix p, states st), the driver merges the
     * (m, l) of those states over all ranks and calls feedback on every
     * rank with ml[2q] = m, ml[2q + 1] = l of query q's merged state, before
     * any further ingest or partial.  Then partial must not update what
     * feedback updates.  Returns KV_OK or KV_EINTERNAL (scratch memory). */
    int (*feedback)(void *state, const float *Q, int nq, int64_t p, const double *ml);
    /* Optional pair, for a method selecting tokens globally (topk: the k
     * largest logits over all ranks).  select_len(state) doubles per query;
     * select(Q, p[], nq, sel) writes, per query, the method's candidates as
     * a list sorted descending (-inf padded), for the same multi-position
     * batch as partial_batch (p[] non-decreasing, tokens < p[q] only).  The
     * driver merges the lists over all ranks (keeping the select_len
     * largest, kv_mpi_topk_merge) and calls partial_select with the merged
     * lists gsel on every rank; it answers the batch like partial_batch.
     * Called after the batch's walk, like partial_batch. */
    int (*select_len)(const void *state);
    int (*select)(void *state, const float *Q, const int64_t *p, int nq, double *sel);
    int (*partial_select)(void *state, const float *Q, const int64_t *p, int nq, const double *gsel, double *st);
    /* Bytes of state held now: every key, value, count and sample. */
    size_t (*bytes)(const void *state);
    void (*extra)(const void *state, kv_method_extra *x); /* may be NULL */
    void (*free)(void *state);
    /* Checkpoints (replay --checkpoint/--resume).  save appends everything
     * that later calls depend on (held tokens, counts, RNG state, scores) to
     * out; load restores it into a state just made by create with the same
     * spec and ctx, so that the resumed run is bitwise the same as an
     * uninterrupted one.  load must reject malformed bytes with an error.
     * save must be deterministic: it only reads the state, and every call
     * appends the same bytes, because a checkpoint saves twice (counting,
     * then writing in bounded pieces: out may be a counting or a bounded
     * kv_buf, core/buf.h) and a mismatch fails it.  load reads with
     * kv_rd_get / kv_rd_sub only (the reader may refill from the file, so
     * in->data is not the bytes), and best restores into the state as it
     * reads rather than staging a copy (tokring.c, rowpool.c). */
    void (*save)(const void *state, kv_buf *out);
    int (*load)(void *state, kv_rd *in, kv_err *err);
    /* An upper bound of bytes() over the whole stream, from the spec and
     * ctx alone (ctx->shard_tokens tokens on this rank): replay
     * --max-memory refuses a run before it starts when the bounds add up to
     * more than allowed. */
    int64_t (*max_bytes)(const void *state);
    /* 1: the state is a function of the calls ingest and horizon alone (no
     * randomness, nothing learnt from queries): exact, topk, window, sinks.
     * A checkpoint then records only its token count, and --resume rebuilds
     * it by replaying the same horizon and ingest calls from the trace
     * (src/replay/ckptstate.c), so checkpoints do not hold the trace.  save
     * and load are still required (direct use, tests). */
    int prefix_state;
    /* Optional: the cumulative counters above (NULL: the driver derives
     * them per query as every held byte read, bytes(); the kept tokens read,
     * extra()'s kept_tokens; and 2 (d + dv) flops per kept token). */
    void (*cost)(const void *state, kv_query_cost *c);
} kv_method_ops;

/* This rank's share of a global budget (tokens, samples): proportional to
 * its shard (ceil(total * shard_tokens / n_total), at least 1), or
 * ceil(total / nranks) when the shard size is unknown.  Shards differ by up
 * to one chunk, so a budget that covers the stream covers every shard. */
int64_t kv_rank_share(const kv_method_ctx *ctx, int64_t total);

/* This rank's tokens with index < x under the chunk-cyclic sharding of
 * ctx->chunk (x clamped to [0, n_total]); -1 when the chunk is unknown.
 * Summed over the ranks it is x: a global budget split by it never sums
 * over the total. */
int64_t kv_rank_tokens_below(const kv_method_ctx *ctx, int64_t x);

/* Tokens this rank will see: ctx->shard_tokens, or n_total when unknown.
 * The bound checkpoint loads and max_bytes work with. */
int64_t kv_shard_limit(const kv_method_ctx *ctx);

/* 1 if all n floats are finite: restored keys and values must be, as every
 * trace's are (io/trace.c checks them as they stream in). */
int kv_all_finite(const float *x, size_t n);

/* The method's parameter called name (sub-tables included); NULL: none. */
const kv_param_def *kv_method_param(const kv_method_ops *ops, const char *name);

/* 1 if the method's table has a budget= parameter (core/budget.h). */
int kv_method_takes_budget(const kv_method_ops *ops);

/* Look a method up by name; NULL if unknown. */
const kv_method_ops *kv_method_find(const char *name);

/* `kvstream methods`: every method grouped by kind, its one-line
 * description and budget, then each parameter with type, default, range and
 * help, written to f. */
void kv_methods_describe(FILE *f);

/* Comma-separated names of all registered methods (for messages). */
const char *kv_method_names(void);

/* Parse spec against ops' table (then ops->check) into spec->cfg and mark it
 * parsed by ops.  Errors name the spec as written. */
int kv_method_parse(const kv_method_ops *ops, kv_spec *spec, kv_err *err);

/* The config in spec, parsed by ops: parses now if it is not yet (a spec
 * straight from kv_spec_parse_list).  NULL with err set on a bad spec. */
const void *kv_method_cfg(const kv_method_ops *ops, kv_spec *spec, kv_err *err);

/* Check a spec list against the registry and every method's parameters,
 * once, before any stream: each spec is parsed into its cfg (kept for the
 * per-stream create calls), then one throw-away instance per spec is
 * created and freed for the checks that need ctx. */
int kv_method_check_specs(kv_spec *specs, int count, const kv_method_ctx *ctx, kv_err *err);

#endif
