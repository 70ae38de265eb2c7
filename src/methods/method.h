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
 * (with its table, config struct and .conform declaration), plus its line
 * in src/methods/registry.c (docs/ADDING_A_METHOD.md). */
#ifndef KVSTREAM_METHOD_H
#define KVSTREAM_METHOD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "core/buf.h"
#include "core/kverr.h"
#include "core/spec.h"
#include "kernels/evict.h"

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
    int64_t kv_heads;   /* streams per layer (trace attribute n_kv_heads; stream s is in layer s / kv_heads); <= 0: unknown */
    int64_t q_group;    /* query rows per position of a stream (n_heads / n_kv_heads; 1 when unknown or 0) */
    int budget_scope;   /* kv_budget_scope: the streams a budget (budget=, tokens=) is a total over */
    int64_t n_streams;  /* streams in the trace (0: unknown; the trace scope needs it) */
    int kv_float16;     /* the trace's keys and values are float16 (exactly representable in half) */
} kv_method_ctx;

/* replay --budget-scope (ALGORITHMS.md section 4g): a method's budget is per
 * stream (today's meaning), or a total over the kv heads of a layer, or over
 * every stream of the trace, allocated by the method's rule. */
typedef enum { KV_SCOPE_STREAM = 0, KV_SCOPE_LAYER = 1, KV_SCOPE_TRACE = 2 } kv_budget_scope;

/* Extra per-instance figures; a method leaves what it lacks at -1. */
typedef struct {
    int64_t clusters;     /* SubGen-style sketches: clusters held */
    int64_t kept_tokens;  /* tokens whose key/value is held */
    int64_t near_ties;    /* global eviction decisions taken by a margin below KV_EVICT_TIE_REL (decide hooks) */
} kv_method_extra;

/* How a method's answers depend on the rank count P (ALGORITHMS.md). */
typedef enum {
    KV_PINV_NO = 0,      /* per-rank decisions (eviction scores, clusters): the answer changes with P */
    KV_PINV_ROUNDING = 1 /* the same answer at every P up to float rounding (global parameters) */
} kv_pinv;

/* A method's conformance declaration.  spec: the parameters of a small,
 * fast instance ("tokens=64"; "" for the defaults; NULL: no declaration,
 * the method is not checked), optionally followed by further cases after
 * ';' that the conformance test also runs ("W=100;W=3": the scripts use the
 * first).  pinv: as above.  semantics: the replay semantics the instance
 * needs (KV_SEM_FULL unless the method answers only another one). */
typedef struct {
    const char *spec;
    kv_pinv pinv;
    kv_semantics semantics;
    int budget_reads; /* 1: budget= bounds what a query reads, not memory (quest): its own test checks the reads */
} kv_method_conform;
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

/* For a method's counters: one answering call of nq queries that reads
 * `bytes` bytes of the state once (queries answered together share a read)
 * and, per query, `tokens` tokens and `flops` flops. */
static inline void kv_cost_add(kv_query_cost *c, int nq, double bytes, double tokens, double flops)
{
    c->read_bytes += bytes;
    c->read_tokens += (double)nq * tokens;
    c->flops += (double)nq * flops;
}

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
    /* Optional group, for an evictor whose decisions must be the ones one
     * rank holding every token would make (h2o, tova, snapkv;
     * kernels/evict.h), so that its answers do not depend on the rank
     * count.  The driver (replay/decide.c) calls them at the method's
     * decision points x: every query position (after the rank ingested its
     * tokens < x, before the queries there are answered) and every positive
     * multiple of decide_every(state) between them (after ingesting the
     * tokens < x).  Between two points a method only holds what arrives.
     * At every point, on every rank and for every stream:
     *   need = decide_need(state, x, at_query): tokens to evict over all
     *          ranks, from global counts only (the same on every rank); it
     *          moves the method's counters to x.  0: nothing to decide.
     * Then for each decision group with need > 0 (decide_group(state)
     * consecutive streams that hold one token set together: 1, or the kv
     * heads of a layer; NULL: 1), collectively:
     *   decide_halo (optional): decide_halo_len doubles per stream, the
     *          rank's contributions (zero elsewhere), summed over the ranks;
     *   decide_cands(the group's states, ns, x, halo, L, keys): the rank's
     *          L = need + 1 lowest candidate keys, ascending, padded, which
     *          the driver merges over the ranks into the L lowest;
     *   decide_apply(states, ns, x, merged, need): drop every candidate
     *          whose key is <= merged[need - 1] (exactly need over all
     *          ranks), and count a near-tie against merged[need].
     *   decide_extra (optional): L = need + 1 + decide_extra(state) keys
     *          instead, for an apply that may skip that many of the lowest
     *          (a per-stream floor, methods/scope.h) and still drops need.
     * cands and apply return KV_OK or KV_EINTERNAL (scratch memory). */
    int64_t (*decide_every)(const void *state);
    int (*decide_group)(const void *state);
    int64_t (*decide_need)(void *state, int64_t x, int at_query);
    int64_t (*decide_extra)(const void *state);
    size_t (*decide_halo_len)(const void *state, int64_t x);
    void (*decide_halo)(void *state, int64_t x, double *halo);
    int (*decide_cands)(void *const *st, int ns, int64_t x, const double *halo, int L, kv_evkey *keys);
    int (*decide_apply)(void *const *st, int ns, int64_t x, const kv_evkey *merged, int64_t need);
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
    /* Optional: a small, fast instance for the conformance test
     * (tests/test_conformance.c, docs/ADDING_A_METHOD.md) and for the
     * scripts that run every method (`kvstream methods --specs`). */
    kv_method_conform conform;
    /* Optional: the cumulative counters above (NULL: the driver derives
     * them per query as every held byte read, bytes(); the kept tokens read,
     * extra()'s kept_tokens; and 2 (d + dv) flops per kept token). */
    void (*cost)(const void *state, kv_query_cost *c);
    /* 1: the method reads ctx budget_scope (its budget is a total over the
     * streams in scope, ALGORITHMS.md 4g); 0: a budget-taking method refuses
     * --budget-scope layer|trace in one line. */
    int scoped;
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

/* 1 if l can be the merged softmax sum of a query over at most n tokens:
 * 0 (none held anywhere), or between 1 (the largest term is e^0) and n.
 * Restored (m, l) pairs must be. */
int kv_merged_l_ok(double l, int64_t n);

/* 1 if all n floats are finite: restored keys and values must be, as every
 * trace's are (io/trace.c checks them as they stream in). */
int kv_all_finite(const float *x, size_t n);

/* The method's parameter called name (sub-tables included); NULL: none. */
const kv_param_def *kv_method_param(const kv_method_ops *ops, const char *name);

/* 1 if the method's table has a budget= parameter (core/budget.h). */
int kv_method_takes_budget(const kv_method_ops *ops);

/* partial for a method with the select pair (topk, quest) on one prefix:
 * its own lists, select then partial_select, which is the global answer
 * when the rank is the only one (the driver uses the pair otherwise). */
int kv_method_partial_by_select(const kv_method_ops *ops, void *state, const float *Q, int nq, int64_t p, double *st);

/* Look a method up by name; NULL if unknown. */
const kv_method_ops *kv_method_find(const char *name);

/* The i-th registered method (i = 0, 1, ...), NULL past the last: the
 * registry's methods, then those added by kv_method_register. */
const kv_method_ops *kv_method_at(int i);

/* For test binaries: add a method defined outside src/methods (the test
 * tree's tests/methods/, which registers through KV_TEST_METHOD) to the
 * registry of this process, so that the conformance test and every lookup
 * see it.  KV_EINPUT for a name already taken, KV_EINTERNAL when full. */
int kv_method_register(const kv_method_ops *ops, kv_err *err);

/* `kvstream methods --specs`: one line per method with a conformance
 * declaration, "NAME KIND SPEC pinv=yes|no semantics=full|window-unmasked
 * budget=yes|no seeded=yes|no" (SPEC: NAME[:PARAMS], the first case, ready
 * for --methods), after a '#' header line. */
void kv_methods_specs(FILE *f);

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
