/* emu.h - P ranks emulated in one process, as the replay driver runs them,
 * for the C tests of methods (test_baselines, test_global_methods).
 *
 * One instance of a method per rank with ctx.rank, nranks, chunk and
 * shard_tokens set for the chunk-cyclic sharding of chunk C; before the
 * queries at prefix p every rank gets horizon(p), then the tokens < p go to
 * their owners in random blocks within chunks; partial states are merged in
 * rank order with kv_partial_merge, as the MPI reduction does, and the
 * merged (m, l) go back through feedback; topk's select lists are merged
 * with kv_topk_merge.  Memory is tracked by epochs as the driver counts it
 * (docs/RESULTS_FORMAT.md, "Memory figures"): each rank's peak bytes within
 * an epoch, an epoch ending at each query position, and `worst` the largest
 * sum over ranks. */
#ifndef KVSTREAM_TEST_EMU_H
#define KVSTREAM_TEST_EMU_H

#include <stddef.h>
#include <stdint.h>
#include "core/rng.h"
#include "methods/method.h"

#define EMU_MAXP 4

typedef struct {
    const kv_method_ops *ops;
    kv_spec *spec;
    void *inst[EMU_MAXP];
    int P, d, dv;
    int64_t C, fed;  /* chunk; tokens [0, fed) delivered to their owners */
    kv_rng rng;      /* block sizes */
    size_t epoch[EMU_MAXP], worst; /* each rank's peak bytes this epoch; max over epochs of their sum */
} emu;

/* Rank r's ctx of P under chunk C: base with rank, nranks, chunk and the
 * rank's shard size. */
kv_method_ctx emu_rank_ctx(const kv_method_ctx *base, int P, int64_t C, int r);

/* The method of spec text (its first spec) on P <= EMU_MAXP ranks; errors
 * of parsing or create in err (nothing open then).  emu_close frees it. */
int emu_open(emu *e, const char *text, const kv_method_ctx *base, int P, int64_t C, kv_err *err);
void emu_close(emu *e);
/* The same with the method's ops given (NULL: looked up by name), for
 * methods outside the registry (the conformance test's broken variants). */
int emu_open_ops(emu *e, const kv_method_ops *ops, const char *text, const kv_method_ctx *base, int P, int64_t C,
                 kv_err *err);

/* The next query position is p: ends the epoch, horizon(p) on every rank,
 * then tokens [fed, p) of K (n x d), V (n x dv) to their owners. */
void emu_advance(emu *e, const float *K, const float *V, int64_t p);

/* nq queries at prefix p (after emu_advance to p): partial on every rank,
 * merged into st (nq states), feedback with the merged (m, l). */
void emu_partial(emu *e, const float *Q, int nq, int64_t p, double *st);

/* emu_advance then emu_partial. */
void emu_query(emu *e, const float *K, const float *V, const float *Q, int nq, int64_t p, double *st);

/* topk's multi-position batch: select on every rank, the lists merged in
 * rank order (gsel, nq x select_len), partial_select, states merged (st). */
void emu_select(emu *e, const float *Q, const int64_t *p, int nq, double *gsel, double *st);

/* The current epoch ends (its per-rank peaks summed into worst). */
void emu_end_epoch(emu *e);

/* bytes() and kept_tokens summed over the ranks now. */
size_t emu_bytes(const emu *e);
int64_t emu_kept(const emu *e);

#endif
