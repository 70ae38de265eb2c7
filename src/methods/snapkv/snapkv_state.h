/* snapkv_state.h - SnapKV's state, shared by the files of src/methods/snapkv/ and
 * by nothing else (the registry sees kv_method_snapkv only).  snapkv.c has
 * the method: parameters, ingest, answers, the buffered query rows, memory
 * and checkpoints; snapkv_decide.c the global decision: the votes, their pooling
 * (halo across shard chunks), the candidates and the drops. */
#ifndef KVSTREAM_SNAPKV_STATE_H
#define KVSTREAM_SNAPKV_STATE_H

#include <stdint.h>
#include "methods/method.h"
#include "methods/common/slots.h"

/* per-slot scratch (kv_slots keeps it with its slot through moves and resizes) */
typedef struct {
    double vote, pooled;
} snapkv_slot;

typedef struct {
    kv_method_ctx ctx;
    int64_t B, W, T, kern, E; /* global tokens, window positions, period (T'), pooling kernel, decision spacing */
    int ns;                   /* streams sharing B (scope.h; 1: per stream) */
    double alpha;             /* the floor's fraction of an even share of the kept candidates (scope.h) */
    int64_t f, gcnt;          /* at this decision: the floor, the stream's candidates over all ranks */
    int maxpool;
    int64_t xlast, gheld;     /* the last decision point; tokens held over all ranks since then */
    int64_t seen, ties;       /* tokens ingested; near-tie decisions */
    kv_query_cost cost;   /* method.h: cost */
    kv_slots sl;              /* held in any slot order; scratch: snapkv_slot */
    int32_t *ord;             /* the held slots by ascending token index (ocap allocated, >= sl.phys) */
    int64_t ocap;
    int stale;                /* the buffer changed since the votes were computed */
    int vfull;                /* every vote to be computed afresh (create, load, a failed computation) */
    int64_t vadd, vrm;        /* since the votes were computed: rows buffered, the newest position that left (-1: none) */
    int64_t px;               /* the decision point the pooled scores were last made at (-1: none) */
    int64_t nrows, rcap;      /* buffered rows, allocated */
    float *bq;                /* their rows (rcap x d), oldest position first */
    int64_t *bp;              /* their positions */
    double *bml;              /* their merged (m, l) */
    kv_store store;           /* how the slots hold their rows (store.h) */
} snapkv_state;

static inline snapkv_slot *slot_of(const snapkv_state *s, int64_t i) { return (snapkv_slot *)s->sl.scratch + i; }

/* The token at order position i (i-th held token by ascending index), and its scratch. */
static inline int64_t tok_at(const snapkv_state *s, int64_t i) { return s->sl.idx[s->ord[i]]; }
static inline snapkv_slot *ord_slot(const snapkv_state *s, int64_t i) { return slot_of(s, s->ord[i]); }

/* The first order position holding a token >= t (the held tokens before t). */
static inline int64_t pos_at(const snapkv_state *s, int64_t t)
{
    int64_t lo = 0, hi = s->sl.held;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (tok_at(s, mid) < t) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* snapkv.c: ord holds at least the slots the arrays have (KV_OK or KV_EINTERNAL). */
int snapkv_fit_ord(snapkv_state *s);

/* snapkv_decide.c: the decide hooks of method.h */
int64_t snapkv_every(const void *state);
int snapkv_group(const void *state);
int64_t snapkv_need(void *state, int64_t x, int at_query);
int64_t snapkv_extra_cands(const void *state);
size_t snapkv_halo_len(const void *state, int64_t x);
void snapkv_halo(void *state, int64_t x, double *halo);
int snapkv_cands(void *const *st, int ns, int64_t x, const double *halo, int L, kv_evkey *keys);
int snapkv_apply(void *const *st, int ns, int64_t x, const kv_evkey *merged, int64_t need);

#endif
