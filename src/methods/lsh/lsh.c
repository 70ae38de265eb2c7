/* lsh.c - lsh:K=<bits>,L=<tables>,threshold=<t>: MagicPIG's LSH sampling
 * (Chen et al. 2024, arXiv 2410.16179; ALGORITHMS.md section 4).  It holds
 * every key and value, like exact, and trades reads, not memory.
 *
 * L SimHash tables of K bits each over the keys: table l's code of a vector
 * x is the K signs of h_{l,b} . x (bit set when >= 0), the hyperplanes h
 * N(0, I) from (seed, stream, l K + b), never the rank.  Per query q at
 * prefix p, each table is probed at q's code; a token whose key collides
 * with q in at least `threshold` of the L tables is sampled, and it is
 * weighted by 1 / u_i, where u_i is its probability of being sampled given
 * its angle theta_i to q (the paper's formula): with p_i = (1 - theta_i /
 * pi)^K the chance to collide in one table, u_i = P(Binomial(L, p_i) >=
 * threshold) (threshold 2: 1 - (1 - p_i)^L - L p_i (1 - p_i)^{L-1}).  The
 * output is the importance-sampling ratio sum_S e^{a_i} v_i / u_i over
 * sum_S e^{a_i} / u_i.  threshold = 0 samples every token with u = 1:
 * exact attention.
 *
 * Ranks: every rank hashes the query with the same hyperplanes and samples
 * its own tokens by the same rule, so the sample (the union over ranks) and
 * the answer, up to rounding, do not depend on P.
 *
 * Tables: each bucket's rows, in increasing order, in a list of chunks of
 * 15 (one 64-byte line with the next chunk's id), and its count, first and
 * last chunk.  A query walks its L buckets up to row p (32 tables in turn,
 * a chunk each, the next chunks prefetched: their misses overlap), counts
 * collisions per row and marks the rows reaching threshold in a bitmap
 * (with a summary bit per bitmap word, so reading it back skips the empty
 * words); the sample is read from the bitmap in increasing row order (the
 * sums' order: the tables' order does not matter) and folded in passes:
 * the keys' dots (prefetched ahead), log u for 16 rows at a time (their
 * library calls independent, so they overlap; the binomial tails' sums in
 * vector lanes, each lane the scalar loop's operations), then the values.
 * So a query touches what it reads, not every row below p (the codes of
 * all rows were scanned before: 39 MB a query at 2^16 tokens).  The
 * counters, bitmaps and sample lists are a thread's scratch in the state,
 * grown geometrically, never allocated per query.
 * Keys are hashed by kernels/simhash.c 4096 at a time (every code bit
 * kv_dot_fixed's sign; on AMX tiles where built, simhash_amx.c), their
 * codes written table by table, then linked table by table with the next
 * buckets' last chunks prefetched.
 *
 * Memory: per allocated row the key and value (float32, as MagicPIG keeps
 * them in CPU memory) and its global index; the chunks, in slabs of 2 MiB
 * added as they fill (a row's L entries, 4 bytes each, 16/15 of that with
 * the chunks' links, plus at most one part-filled chunk per nonempty
 * bucket); per bucket its count and first and last chunk (3 x 4 bytes, a
 * hash table's heads); the L K d hyperplanes (padded to 64 planes).
 * Reads (the cost hook) are a hash table's: the hyperplanes (hashing the
 * query), the L bucket heads and every entry of the L buckets probed, as
 * tokens' worth of bytes ((d + dv) 4 bytes a token), plus the sampled
 * tokens' keys and values. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "core/search.h"
#include <omp.h>
#include "core/hugemem.h"
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "kernels/simhash.h"
#include "methods/lsh/lsh_fold.h"
#include "methods/method.h"

#define LSH_SALT 0x6c7368ULL /* "lsh" */
#define NIL UINT32_MAX
#define CHUNK 16 /* uint32 per bucket chunk: one 64-byte line */
#define SLAB_BITS 15 /* 2^15 chunks a slab: 2 MiB, one huge page */
#define SLAB_BYTES ((size_t)CHUNK * sizeof(uint32_t) << SLAB_BITS)

typedef struct {
    kv_method_ctx ctx;
    int K, L, thr;
    uint64_t seed;
    float *H;          /* L K hyperplanes of d, packed for kv_simhash_codes */
    float *Kr, *V;     /* rows */
    int64_t *idx;      /* global index of each row (increasing) */
    uint32_t *count;   /* count[l 2^K + code]: rows in the bucket */
    uint32_t *head, *tail; /* per bucket: its first and last chunk, NIL when empty */
    uint32_t **slab;   /* chunks of CHUNK (the next chunk's id, then CHUNK - 1 rows), SLAB to a slab */
    size_t n, cap, nchunk, nslab;
    double lt0;        /* log C(L, thr): the binomial tails' constant */
    struct lsh_scr *scr; /* a thread's query scratch, nscr of them */
    int nscr;
    kv_query_cost cost;
} lsh_state;

/* A thread's query scratch, grown geometrically, never per query: the
 * collision counters (zero between queries), the sample's bitmap and its
 * summary (a bit per nonzero bitmap word; both zero between queries) and
 * the sample's rows with their dots and log u. */
typedef struct lsh_scr {
    uint16_t *cnt;
    uint64_t *sel, *top;
    uint32_t *rows;
    float *dot;  /* per sampled row: q . k, then k . k (kv_dot_fixed) */
    double *lu;  /* per sampled row: log u */
    size_t n, nrows;
} lsh_scr;

typedef struct { int64_t K, L, threshold, seed; } lsh_cfg;
KV_CFG_FITS(lsh_cfg);

static const kv_param_def lsh_params[] = {
    KV_PARAM_INT(lsh_cfg, K, 10, 1, 24, "SimHash bits per table"),
    KV_PARAM_INT(lsh_cfg, L, 150, 1, 4096, "hash tables"),
    KV_PARAM_INT(lsh_cfg, threshold, 2, 0, 4096,
                 "collisions (tables) that sample a token; 0: every token, exact attention"),
    KV_PARAM_INT_DERIVED(lsh_cfg, seed, -1, "--seed", 0, INT64_MAX, "hyperplane seed (the stream is mixed in)"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_lsh;

static int lsh_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    const lsh_cfg *c = cfg;
    if (c->threshold > c->L) return kv_params_error(lsh_params, spec, err, "threshold must be <= L");
    if ((c->L << c->K) > (INT64_C(1) << 28))
        return kv_params_error(lsh_params, spec, err, "L 2^K bucket heads above 2^28 (1 GiB)");
    return KV_OK;
}

static size_t heads(const lsh_state *s) { return (size_t)s->L << s->K; }

static int lsh_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const lsh_cfg *c = kv_method_cfg(&kv_method_lsh, spec, err);
    if (!c) return err->code;
    if (kv_shard_limit(ctx) >= (int64_t)NIL)
        return kv_params_error(lsh_params, spec, err, "more than 2^32 - 1 tokens on a rank");
    lsh_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->K = (int)c->K;
    s->L = (int)c->L;
    s->thr = (int)c->threshold;
    s->seed = c->seed < 0 ? ctx->seed : (uint64_t)c->seed;
    size_t nh = (size_t)s->L * (size_t)s->K * (size_t)ctx->d;
    float *H = kv_malloc(sizeof(float) * nh, err);
    s->H = H ? kv_malloc(sizeof(float) * kv_simhash_len(s->L * s->K, ctx->d), err) : NULL;
    s->count = s->H ? kv_calloc(heads(s), sizeof(uint32_t), err) : NULL;
    s->head = s->count ? kv_malloc(sizeof(uint32_t) * heads(s), err) : NULL;
    s->tail = s->head ? kv_malloc(sizeof(uint32_t) * heads(s), err) : NULL;
    if (!s->tail) {
        free(H);
        free(s->H);
        free(s->count);
        free(s->head);
        free(s);
        return err->code;
    }
    memset(s->head, 0xff, sizeof(uint32_t) * heads(s));
    if (s->thr > 0)
        s->lt0 = lgamma(s->L + 1.0) - lgamma(s->thr + 1.0) - lgamma(s->L - s->thr + 1.0);
    for (size_t i = 0; i < nh; i++)
        H[i] = (float)kv_hash_normal(s->seed ^ LSH_SALT, (uint64_t)ctx->stream, i / (size_t)ctx->d, i % (size_t)ctx->d);
    kv_simhash_pack(H, s->L * s->K, ctx->d, s->H);
    free(H);
    *out = s;
    return KV_OK;
}

static size_t cap_for(const lsh_state *s, size_t need)
{
    if (s->ctx.shard_tokens > 0 && need <= (size_t)s->ctx.shard_tokens) return (size_t)s->ctx.shard_tokens;
    size_t c = 1024;
    while (c < need) c *= 2;
    return c;
}

/* chunks enough for rows rows in every table: each bucket's full chunks
 * plus at most one part-filled one per nonempty bucket */
static size_t chunk_bound(const lsh_state *s, size_t rows)
{
    size_t e = rows * (size_t)s->L, b = heads(s) < e ? heads(s) : e;
    return e / (CHUNK - 1) + b;
}

/* chunk c's words */
static inline uint32_t *chunk(const lsh_state *s, uint32_t c)
{
    return s->slab[c >> SLAB_BITS] + (size_t)(c & ((1u << SLAB_BITS) - 1)) * CHUNK;
}

/* slabs enough for the chunk bound of rows rows */
static size_t slab_bound(const lsh_state *s, size_t rows) { return (chunk_bound(s, rows) >> SLAB_BITS) + 1; }

/* room for rows rows: their keys, values and indices, and the slab table
 * for their chunks (slabs are added as chunks are needed: never copied) */
static int reserve(lsh_state *s, size_t rows)
{
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (rows <= s->cap) return KV_OK;
    float *Kr = realloc(s->Kr, sizeof(float) * d * rows);
    if (Kr) s->Kr = Kr;
    float *V = Kr ? realloc(s->V, sizeof(float) * dv * rows) : NULL;
    if (V) s->V = V;
    int64_t *idx = V ? realloc(s->idx, sizeof(int64_t) * rows) : NULL;
    if (idx) s->idx = idx;
    size_t ns = slab_bound(s, rows);
    uint32_t **slab = idx && ns < (NIL >> SLAB_BITS) ? realloc(s->slab, sizeof(uint32_t *) * ns) : NULL;
    if (!slab) return KV_EINTERNAL;
    s->slab = slab;
    s->cap = rows;
    kv_mem_hugepages(s->Kr, sizeof(float) * d * rows); /* one fault per 2 MiB as ingest first touches them */
    kv_mem_hugepages(s->V, sizeof(float) * dv * rows);
    return KV_OK;
}

/* one more chunk (next = NIL), a slab added when the last is full: its id,
 * or NIL when out of memory */
static uint32_t new_chunk(lsh_state *s)
{
    if (s->nchunk == s->nslab << SLAB_BITS) {
        if (s->nslab == slab_bound(s, s->cap)) return NIL; /* not reached: the bound holds */
        uint32_t *p = aligned_alloc(SLAB_BYTES, SLAB_BYTES);
        if (!p) return NIL;
#ifdef MADV_HUGEPAGE
        (void)madvise(p, SLAB_BYTES, MADV_HUGEPAGE); /* a hint: one fault for the slab as links first touch it */
#endif
        s->slab[s->nslab++] = p;
    }
    chunk(s, (uint32_t)s->nchunk)[0] = NIL;
    return (uint32_t)s->nchunk++;
}

/* append rows r0 .. r0 + nt - 1 to table l's buckets, row t to bucket
 * code[t]: the bucket of the row LINK_PF ahead has its last chunk
 * prefetched (the tails of a table's buckets do not stay in cache between
 * its turns: their misses overlap) */
#define LINK_PF 16
static int link_table(lsh_state *s, size_t l, const uint32_t *code, size_t r0, size_t nt)
{
    uint32_t *count = s->count + (l << s->K), *head = s->head + (l << s->K), *tail = s->tail + (l << s->K);
    for (size_t t = 0; t < nt; t++) {
        if (t + LINK_PF < nt) {
            uint32_t bp = code[t + LINK_PF];
            if (count[bp]) __builtin_prefetch(chunk(s, tail[bp]), 1);
        }
        uint32_t b = code[t], k = count[b] % (CHUNK - 1);
        if (k == 0) { /* the bucket's first chunk, or its last is full */
            uint32_t c = new_chunk(s);
            if (c == NIL) return KV_EINTERNAL;
            if (count[b]) chunk(s, tail[b])[0] = c;
            else head[b] = c;
            tail[b] = c;
        }
        chunk(s, tail[b])[1 + k] = (uint32_t)(r0 + t);
        count[b]++;
    }
    return KV_OK;
}

/* hash the stored rows s->n .. s->n + n - 1 and append each to its bucket
 * in every table: LINK_BLK rows hashed, their codes written table by
 * table, then linked table by table (one table's tails and counts stay in
 * cache while its rows go in; more rows a turn, more entries per tail
 * line fetched) */
#define LINK_BLK 4096
static int link_rows(lsh_state *s, size_t n)
{
    size_t d = (size_t)s->ctx.d, L = (size_t)s->L, blk = n < LINK_BLK ? n : LINK_BLK;
    uint32_t *ct = malloc(sizeof(uint32_t) * blk * L);
    int rc = ct ? KV_OK : KV_EINTERNAL;
    for (size_t t0 = 0; !rc && t0 < n; t0 += LINK_BLK) {
        size_t nt = n - t0 < LINK_BLK ? n - t0 : LINK_BLK;
        if (kv_simhash_codes_at(s->H, s->L, s->K, (int)d, s->Kr + s->n * d, nt, ct, 1, nt)) rc = KV_EINTERNAL;
        for (size_t l = 0; !rc && l < L; l++) rc = link_table(s, l, ct + l * nt, s->n, nt);
        if (!rc) s->n += nt;
    }
    free(ct);
    return rc;
}

static int lsh_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    lsh_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (s->n + n > s->cap && reserve(s, cap_for(s, s->n + n)))
        return kv_seterr(err, KV_EINTERNAL, "lsh: out of memory holding %zu tokens", s->n + n);
    memcpy(s->Kr + s->n * d, K, sizeof(float) * d * n);
    memcpy(s->V + s->n * dv, V, sizeof(float) * dv * n);
    for (size_t t = 0; t < n; t++) s->idx[s->n + t] = first + (int64_t)t;
    if (link_rows(s, n)) return kv_seterr(err, KV_EINTERNAL, "lsh: out of memory hashing %zu tokens", n);
    return KV_OK;
}

/* rows with global index < p: a prefix (indices increase) */
static size_t rows_below(const lsh_state *s, int64_t p) { return (size_t)kv_lower_i64(s->idx, (int64_t)s->n, p); }

/* the rows < n of table l's buckets qc[l], all l: counted into w->cnt
 * (rows reaching s->thr marked in w->sel and its summary w->top, their
 * number returned), or, clear, their counters zeroed.  WALK tables at
 * once, a chunk of each in turn: their chunks' cache misses overlap
 * instead of queueing. */
#define WALK 32
static size_t walk(const lsh_state *s, const uint32_t *qc, size_t n, lsh_scr *w, int clear)
{
    size_t ns = 0;
    uint16_t thr = (uint16_t)s->thr, *cnt = w->cnt;
    for (size_t l0 = 0; l0 < (size_t)s->L; l0 += WALK) {
        size_t nw = (size_t)s->L - l0 < WALK ? (size_t)s->L - l0 : WALK, left[WALK];
        uint32_t at[WALK];
        int busy = 0;
        for (size_t j = 0; j < nw; j++) {
            size_t b = ((l0 + j) << s->K) + qc[l0 + j];
            left[j] = s->count[b];
            at[j] = s->head[b];
            busy += left[j] > 0;
            if (left[j]) __builtin_prefetch(chunk(s, at[j]));
        }
        while (busy)
            for (size_t j = 0; j < nw; j++) {
                if (!left[j]) continue;
                const uint32_t *e = chunk(s, at[j]);
                size_t m = left[j] < CHUNK - 1 ? left[j] : CHUNK - 1;
                left[j] -= m;
                at[j] = e[0];
                if (left[j]) __builtin_prefetch(chunk(s, at[j]));
                for (size_t i = 1; i <= m; i++) {
                    uint32_t r = e[i];
                    if (r >= n) { left[j] = 0; break; }
                    if (clear) cnt[r] = 0;
                    else if (++cnt[r] == thr) {
                        w->sel[r >> 6] |= UINT64_C(1) << (r & 63);
                        w->top[r >> 12] |= UINT64_C(1) << ((r >> 6) & 63);
                        ns++;
                    }
                }
                busy -= !left[j];
            }
    }
    return ns;
}

/* the sample's rows in increasing order from the bitmap (the sums' order:
 * the tables' order does not matter), the bitmap and summary left zero */
static void sample_rows(lsh_scr *w, size_t n)
{
    size_t i = 0;
    for (size_t g = 0; g < (n + 4095) / 4096; g++) {
        for (uint64_t t = w->top[g]; t; t &= t - 1) {
            size_t wd = g * 64 + (size_t)__builtin_ctzll(t);
            for (uint64_t m = w->sel[wd]; m; m &= m - 1) w->rows[i++] = (uint32_t)(wd * 64 + (size_t)__builtin_ctzll(m));
            w->sel[wd] = 0;
        }
        w->top[g] = 0;
    }
}

/* One query: fold this rank's sampled rows < p into st (empty when none);
 * qc: its L codes; w: this thread's scratch (for s->n rows); c gets what
 * it read. */
static int answer_one(const lsh_state *s, const float *q, const uint32_t *qc, int64_t p, double *st, lsh_scr *w,
                      kv_query_cost *c)
{
    int d = s->ctx.d, dv = s->ctx.dv;
    size_t n = rows_below(s, p), ns = n;
    double walked = 0;
    kv_partial_clear(st, dv);
    memset(c, 0, sizeof *c);
    if (!n) return KV_OK;
    if (s->thr > 0) {
        for (size_t l = 0; l < (size_t)s->L; l++) {
            size_t b = (l << s->K) + qc[l];
            walked += s->count[b];
            __builtin_prefetch(s->head + b);
        }
        /* the collisions of the rows < p: the L probed buckets walked up to
         * row n (rows increase along a bucket), a row taken when its count
         * reaches thr; then the counters cleared: all n at once (2 n bytes,
         * written at ~32 a cycle) unless the walk's entries are far fewer
         * (each a few cycles: large K, sparse buckets), then by the same walk */
        ns = walk(s, qc, n, w, 0);
        if (n <= 8 * (size_t)walked) memset(w->cnt, 0, sizeof(uint16_t) * n);
        else walk(s, qc, n, w, 1);
    }
    if (ns > w->nrows) {
        size_t m = w->nrows ? w->nrows : 1024;
        while (m < ns) m *= 2;
        uint32_t *r = realloc(w->rows, sizeof(uint32_t) * m); /* geometric: rare */
        if (r) w->rows = r;
        float *dt = r ? realloc(w->dot, sizeof(float) * 2 * m) : NULL;
        if (dt) w->dot = dt;
        double *lu = dt ? realloc(w->lu, sizeof(double) * (m + KV_LSH_FB)) : NULL; /* log u in whole blocks */
        if (!lu) return KV_EINTERNAL;
        w->lu = lu;
        w->nrows = m;
    }
    if (s->thr == 0)
        for (size_t r = 0; r < n; r++) w->rows[r] = (uint32_t)r;
    else
        sample_rows(w, n);
    kv_lsh_rows rr = { s->Kr, s->V, d, dv, s->K, s->L, s->thr, (float)s->ctx.scale, s->lt0 };
    kv_lsh_fold(&rr, q, w->rows, ns, w->dot, w->lu, st);
    /* reads: hashing q (the hyperplanes), the L heads and the entries
     * walked (4 bytes each), the sampled rows */
    double tb = (double)(d + dv) * sizeof(float), hb = 0, tok = (double)ns;
    if (s->thr > 0)
        hb = (double)s->L * s->K * d * sizeof(float) + (double)s->L * sizeof(uint32_t) + walked * sizeof(uint32_t);
    c->read_bytes = hb + tok * tb;
    c->read_tokens = hb / tb + tok;
    c->flops = (s->thr > 0 ? 2.0 * s->L * s->K * d : 0.0) + tok * 2.0 * (d + dv);
    return KV_OK;
}

/* nt threads' scratch for s->n rows: counters zero, bitmaps zero (grown
 * geometrically, the new parts zeroed) */
static int scratch_for(lsh_state *s, int nt)
{
    if (nt > s->nscr) {
        lsh_scr *x = realloc(s->scr, sizeof *x * (size_t)nt);
        if (!x) return KV_EINTERNAL;
        memset(x + s->nscr, 0, sizeof *x * (size_t)(nt - s->nscr));
        s->scr = x;
        s->nscr = nt;
    }
    for (int t = 0; t < nt; t++) {
        lsh_scr *w = &s->scr[t];
        if (s->n <= w->n) continue;
        size_t m = w->n ? w->n : 1024, ow = (w->n + 63) / 64, ot = (ow + 63) / 64;
        while (m < s->n) m *= 2;
        size_t nw = (m + 63) / 64, ntp = (nw + 63) / 64;
        uint16_t *cnt = realloc(w->cnt, sizeof(uint16_t) * m);
        if (cnt) w->cnt = cnt;
        uint64_t *sel = cnt ? realloc(w->sel, sizeof(uint64_t) * nw) : NULL;
        if (sel) w->sel = sel;
        uint64_t *top = sel ? realloc(w->top, sizeof(uint64_t) * ntp) : NULL;
        if (!top) return KV_EINTERNAL;
        w->top = top;
        memset(w->cnt + w->n, 0, sizeof(uint16_t) * (m - w->n));
        memset(w->sel + ow, 0, sizeof(uint64_t) * (nw - ow));
        memset(w->top + ot, 0, sizeof(uint64_t) * (ntp - ot));
        w->n = m;
    }
    return KV_OK;
}

static void scratch_free(lsh_state *s)
{
    for (int t = 0; t < s->nscr; t++) {
        free(s->scr[t].cnt);
        free(s->scr[t].sel);
        free(s->scr[t].top);
        free(s->scr[t].rows);
        free(s->scr[t].dot);
        free(s->scr[t].lu);
    }
    free(s->scr);
}

static int lsh_partial_batch(void *state, const float *Q, const int64_t *p, int nq, double *st)
{
    lsh_state *s = state;
    size_t sl = KV_PSTATE_LEN(s->ctx.dv), L = (size_t)s->L, nb = (size_t)(nq > 0 ? nq : 1);
    int nt = nq > 1 && !omp_in_parallel() ? omp_get_max_threads() : 1;
    kv_query_cost *c = calloc(nb, sizeof *c);
    uint32_t *qc = malloc(sizeof(uint32_t) * nb * L); /* every query's codes, hashed in blocks before the walk */
    int bad = !c || !qc || scratch_for(s, nt);
    if (!bad && s->thr > 0 && nq > 0) bad = kv_simhash_codes(s->H, s->L, s->K, s->ctx.d, Q, (size_t)nq, qc);
    if (!bad)
#pragma omp parallel num_threads(nt) reduction(| : bad) if (nt > 1)
    {
        lsh_scr *w = &s->scr[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
        for (int q = 0; q < nq; q++)
            bad |= answer_one(s, Q + (size_t)q * s->ctx.d, qc + (size_t)q * L, p[q], st + q * sl, w, &c[q]) != KV_OK;
    }
    for (int q = 0; !bad && q < nq; q++) { /* in query order: the totals do not depend on the threads */
        s->cost.read_bytes += c[q].read_bytes;
        s->cost.read_tokens += c[q].read_tokens;
        s->cost.flops += c[q].flops;
    }
    free(c);
    free(qc);
    return bad ? KV_EINTERNAL : KV_OK;
}

static int lsh_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    if (nq <= 0) return KV_OK;
    int64_t *pp = malloc(sizeof(int64_t) * (size_t)nq);
    if (!pp) return KV_EINTERNAL;
    for (int q = 0; q < nq; q++) pp[q] = p;
    int rc = lsh_partial_batch(state, Q, pp, nq, st);
    free(pp);
    return rc;
}

static size_t row_bytes(const lsh_state *s)
{
    return (size_t)(s->ctx.d + s->ctx.dv) * sizeof(float) + sizeof(int64_t);
}

static size_t fixed_bytes(const lsh_state *s)
{
    return kv_simhash_len(s->L * s->K, s->ctx.d) * sizeof(float) + 3 * heads(s) * sizeof(uint32_t);
}

static size_t lsh_bytes(const void *state)
{
    const lsh_state *s = state;
    return s->cap * row_bytes(s) + slab_bound(s, s->cap) * sizeof(uint32_t *) + s->nslab * SLAB_BYTES + fixed_bytes(s);
}

static void lsh_extra(const void *state, kv_method_extra *x)
{
    const lsh_state *s = state;
    x->clusters = -1;
    x->kept_tokens = (int64_t)s->n;
}

static void lsh_cost(const void *state, kv_query_cost *c) { *c = ((const lsh_state *)state)->cost; }

static void lsh_free(void *state)
{
    lsh_state *s = state;
    if (!s) return;
    free(s->H);
    free(s->Kr);
    free(s->V);
    free(s->idx);
    for (size_t i = 0; i < s->nslab; i++) free(s->slab[i]);
    free(s->slab);
    free(s->head);
    free(s->tail);
    free(s->count);
    scratch_free(s);
    free(s);
}

/* Rows and their global indices; the tables are rebuilt from the keys (the
 * hyperplanes come from the spec and ctx). */
static void lsh_save(const void *state, kv_buf *out)
{
    const lsh_state *s = state;
    kv_buf_put_arr(out, s->Kr, s->n * (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_arr(out, s->V, s->n * (size_t)s->ctx.dv * sizeof(float));
    kv_buf_put_arr(out, s->idx, s->n * sizeof(int64_t));
}

static int lsh_load(void *state, kv_rd *in, kv_err *err)
{
    lsh_state *s = state;
    void *K = NULL, *V = NULL, *I = NULL;
    size_t nk = 0, nv = 0, ni = 0, lim = (size_t)kv_shard_limit(&s->ctx);
    int ok = !kv_rd_arr(in, &K, sizeof(float) * (size_t)s->ctx.d, lim, &nk, err) &&
             !kv_rd_arr(in, &V, sizeof(float) * (size_t)s->ctx.dv, lim, &nv, err) &&
             !kv_rd_arr(in, &I, sizeof(int64_t), lim, &ni, err) && nk == nv && nk == ni &&
             kv_all_finite(K, nk * (size_t)s->ctx.d) && kv_all_finite(V, nv * (size_t)s->ctx.dv);
    const int64_t *idx = I;
    for (size_t r = 0; ok && r < ni; r++) /* increasing, within the stream */
        ok = idx[r] >= 0 && idx[r] < s->ctx.n_total && (r == 0 || idx[r] > idx[r - 1]);
    if (ok && nk && reserve(s, cap_for(s, nk))) {
        ok = 0;
        kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring lsh (%zu tokens)", nk);
    }
    if (ok && nk) {
        memcpy(s->Kr, K, sizeof(float) * (size_t)s->ctx.d * nk);
        memcpy(s->V, V, sizeof(float) * (size_t)s->ctx.dv * nk);
        memcpy(s->idx, I, sizeof(int64_t) * nk);
        memset(s->count, 0, sizeof(uint32_t) * heads(s));
        memset(s->head, 0xff, sizeof(uint32_t) * heads(s));
        s->n = 0;
        s->nchunk = 0;
        if (link_rows(s, nk)) {
            ok = 0;
            kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring lsh (%zu tokens)", nk);
        }
    }
    free(K);
    free(V);
    free(I);
    if (!ok) return err->code ? err->code : kv_seterr(err, KV_EINPUT, "checkpoint: lsh state is inconsistent");
    return KV_OK;
}

static int64_t lsh_max_bytes(const void *state)
{
    const lsh_state *s = state;
    int64_t n = kv_shard_limit(&s->ctx), rows = s->ctx.shard_tokens > 0 ? n : 2 * n + 1024;
    return rows * (int64_t)row_bytes(s) + (int64_t)(slab_bound(s, (size_t)rows) * (SLAB_BYTES + sizeof(uint32_t *))) +
           (int64_t)fixed_bytes(s);
}

const kv_method_ops kv_method_lsh = {
    .name = "lsh",
    .kind = "oracle",
    .summary = "MagicPIG: tokens colliding with the query in >= threshold of L SimHash tables, importance-weighted",
    .budget = NULL,
    .params = lsh_params,
    .cfg_size = sizeof(lsh_cfg),
    .check = lsh_check,
    .create = lsh_create,
    .ingest = lsh_ingest,
    .partial = lsh_partial,
    .partial_batch = lsh_partial_batch,
    .bytes = lsh_bytes,
    .extra = lsh_extra,
    .free = lsh_free,
    .save = lsh_save,
    .load = lsh_load,
    .max_bytes = lsh_max_bytes,
    .prefix_state = 1,
    .cost = lsh_cost,
    .conform = { "K=4,L=6;K=2,L=3,threshold=0,seed=4", KV_PINV_ROUNDING },
};
