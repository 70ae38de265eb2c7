/* topk.c - topk:k=<tokens>: attention restricted to the k largest logits
 * over the whole cache, all ranks together (ALGORITHMS.md section 4).  Not a
 * compression method: it holds every key and value like exact and is a
 * reference for how much of the attention the top logits carry.
 *
 * Global selection (method.h: select, partial_select): per query each rank
 * lists its k largest logits (descending, -inf padded), the driver merges
 * the lists over ranks into the global k largest, and each rank then folds
 * exactly its tokens whose logit is >= the global k-th largest t.  Ties at
 * t are all taken: a query attends to the k largest logits plus every other
 * token equal to the k-th, so the selected set, and the answer up to float
 * rounding, are the same for every rank count (with fewer than k tokens in
 * the prefix, t = -inf and every token is taken).  Thresholds compare equal
 * on every rank because a token's logit is computed by one fixed-order dot
 * product (kv_dot_fixed, kernels/dot.h), whatever row or rank holds it.
 *
 * Memory: (d + dv) floats per allocated row, as exact, plus a run table
 * (global index of each contiguous run of rows: one per owned chunk),
 * counted by capacity; the rows are allocated once for the rank's shard
 * (ctx->shard_tokens) at the first ingest. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "core/search.h"
#include "core/hugemem.h"
#include "kernels/dot.h"
#include "kernels/logits.h"
#include "methods/method.h"
#include "kernels/partial.h"
#include "methods/topk/topk_pick.h"

typedef struct { int64_t first, local; } run; /* global index of local row */

typedef struct {
    kv_method_ctx ctx;
    int64_t k;
    float *K, *V;
    size_t n, cap;
    run *runs;    /* rows local.. hold tokens first.. (up to the next run) */
    size_t nruns, rcap;
    kv_query_cost cost; /* method.h: cost */
    /* select's lists kept for the partial_select of the same batch (queries
     * and prefixes compared): per query its candidates' rows, ascending, and
     * how many; transient per-batch scratch, freed by partial_select */
    float *cq;
    int64_t *cp, *crow, *cn;
    float *cout; /* per query: the largest logit among the rows not listed (-inf: none) */
    int cnq;
} topk_state;

typedef struct { int64_t k; } topk_cfg;
KV_CFG_FITS(topk_cfg);

static const kv_param_def topk_params[] = {
    KV_PARAM_INT(topk_cfg, k, 64, 1, INT64_MAX, "largest logits per query over all ranks attended to (ties at the k-th: all)"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_topk;

static size_t row_bytes(const topk_state *s)
{
    return (size_t)(s->ctx.d + s->ctx.dv) * sizeof(float);
}

static int topk_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const topk_cfg *c = kv_method_cfg(&kv_method_topk, spec, err);
    if (!c) return err->code;
    topk_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->k = c->k;
    *out = s;
    return KV_OK;
}

static int reserve(topk_state *s, size_t rows)
{
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    float *Kn = realloc(s->K, sizeof(float) * d * rows);
    if (Kn) s->K = Kn;
    float *Vn = realloc(s->V, sizeof(float) * dv * rows);
    if (Vn) s->V = Vn;
    if (!Kn || !Vn) return KV_EINTERNAL;
    /* the rows not touched yet on huge pages (core/hugemem.h: exact's ingest) */
    kv_mem_hugepages(s->K + s->cap * d, sizeof(float) * d * (rows - s->cap));
    kv_mem_hugepages(s->V + s->cap * dv, sizeof(float) * dv * (rows - s->cap));
    s->cap = rows;
    return KV_OK;
}

static int topk_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    topk_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (s->n + n > s->cap) {
        /* the whole shard at once; doubling only if the shard size is unknown or wrong */
        size_t nc = (size_t)(s->ctx.shard_tokens > 0 ? s->ctx.shard_tokens : 0);
        if (nc < s->n + n) {
            nc = s->cap ? s->cap : 1024;
            while (nc < s->n + n) nc *= 2;
        }
        if (reserve(s, nc)) return kv_seterr(err, KV_EINTERNAL, "topk: out of memory holding %zu tokens", nc);
    }
    /* a new run unless this block continues the previous one */
    if (n && (!s->nruns || s->runs[s->nruns - 1].first + (int64_t)(s->n - (size_t)s->runs[s->nruns - 1].local) != first)) {
        if (s->nruns == s->rcap) {
            size_t rc = s->rcap ? 2 * s->rcap : 16;
            run *R = realloc(s->runs, sizeof(run) * rc);
            if (!R) return kv_seterr(err, KV_EINTERNAL, "topk: out of memory holding %zu runs", rc);
            s->runs = R;
            s->rcap = rc;
        }
        s->runs[s->nruns++] = (run){ first, (int64_t)s->n };
    }
    memcpy(s->K + s->n * d, K, sizeof(float) * d * n);
    memcpy(s->V + s->n * dv, V, sizeof(float) * dv * n);
    s->n += n;
    return KV_OK;
}


/* rows holding tokens < p: rows are in stream order, so a prefix of them */
static size_t rows_below(const topk_state *s, int64_t p)
{
    size_t lo = 0, hi = s->nruns; /* runs [0, lo) start below p */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->runs[mid].first < p) lo = mid + 1;
        else hi = mid;
    }
    if (!lo) return 0;
    const run *r = &s->runs[lo - 1];
    size_t end = lo < s->nruns ? (size_t)s->runs[lo].local : s->n;
    size_t take = (size_t)(p - r->first);
    return (size_t)r->local + (take < end - (size_t)r->local ? take : end - (size_t)r->local);
}

/* The logits of the nt rows at ptr[] under q: kv_dot_fixed's order, a
 * block of KV_DOT_BLK rows at a time (independent accumulators), times
 * scale.  One compiled copy (noinline) serves every caller, so a token's
 * logit has the same bits in select and in partial_select on every rank,
 * which the threshold compares rely on. */
static __attribute__((noinline)) void logits_rows(const float *q, int d, const float *const *ptr, size_t nt,
                                                  float scale, float *a)
{
    size_t t = 0;
    for (; t + KV_DOT_BLK <= nt; t += KV_DOT_BLK) kv_dot_fixed_rows(q, 1, d, ptr + t, KV_DOT_BLK, a + t);
    if (t < nt) kv_dot_fixed_rows(q, 1, d, ptr + t, (int)(nt - t), a + t);
    for (size_t i = 0; i < nt; i++) a[i] *= scale;
}

#define LBLK 256 /* rows per block of logits */
#define BATCH_MIN 4 /* queries from which select packs key tiles for the batch */

/* logits of rows [r0, r0 + nt) (nt <= LBLK) */
static void logits_at(const topk_state *s, const float *q, size_t r0, size_t nt, float *a)
{
    const float *ptr[LBLK];
    for (size_t t = 0; t < nt; t++) ptr[t] = s->K + (r0 + t) * (size_t)s->ctx.d;
    logits_rows(q, s->ctx.d, ptr, nt, (float)s->ctx.scale, a);
}

static int topk_select_len(const void *state)
{
    const topk_state *s = state;
    int64_t L = s->k;
    if (s->ctx.n_total > 0 && L > s->ctx.n_total) L = s->ctx.n_total; /* a list of every token suffices */
    return L > INT32_MAX ? INT32_MAX : (int)L;
}

/* One query: this rank's L largest logits among tokens < p, descending,
 * into sel, the rows holding them (k = min(L, n) of them, ascending) into
 * rows, and the largest logit of the rows left out into *out.  One pass
 * over the keys, a block of logits at a time. */
static int select_one(const topk_state *s, const float *q, int64_t p, int L, double *sel, int64_t *rows,
                      int64_t *nrows, float *out)
{
    size_t n = rows_below(s, p), k = (size_t)L < n ? (size_t)L : n;
    void *buf = malloc(kv_tk_bytes(k));
    if (!buf) return KV_EINTERNAL;
    kv_tk_picker pk;
    kv_tk_init(&pk, buf, k);
    float a[LBLK];
    for (size_t r0 = 0; r0 < n; r0 += LBLK) {
        size_t nt = n - r0 < LBLK ? n - r0 : LBLK;
        logits_at(s, q, r0, nt, a);
        kv_tk_feed(&pk, a, r0, nt, kv_tk_max(a, nt));
    }
    kv_tk_done(&pk, L, sel, rows, nrows, out);
    free(buf);
    return KV_OK;
}

/* The logits of tile r0 (packed in KT) for the m <= KV_LQ queries qs[]
 * reaching it, fed to their pickers */
static void pick_tile(const topk_state *s, kv_tk_picker *pk, const size_t *n, const int *qs, int m, size_t r0,
                      const float *KT, const float *Q, float *a, float *top)
{
    size_t d = (size_t)s->ctx.d;
    const float *qp[KV_LQ];
    for (int i = 0; i < m; i++) qp[i] = Q + (size_t)qs[i] * d;
    kv_lt_logits_q(qp, m, KT, (int)d, (float)s->ctx.scale, a, top);
    for (int i = 0; i < m; i++) {
        size_t nt = n[qs[i]] - r0 < KV_LT ? n[qs[i]] - r0 : KV_LT;
        const float *ai = a + (size_t)i * KV_LT;
        kv_tk_feed(&pk[qs[i]], ai, r0, nt, nt == KV_LT ? top[i] : kv_tk_max(ai, nt));
    }
}

/* A batch: the same lists as select_one per query, each tile of KV_LT
 * keys read once per thread for all of its queries.  Each thread takes its
 * queries (interleaved: prefixes spread evenly) and walks the keys a tile
 * at a time: packs the tile (kernels/logits.h) into its own scratch, then
 * its queries whose prefix reaches the tile take their logits there, from
 * L1, KV_LQ at a time (each key vector loaded once feeds all of them).
 * The same logits, bitwise, fed in the same row order as select_one feeds
 * them; no barrier between tiles (a thread descheduled on a busy machine
 * holds up no other). */
static int select_batch(topk_state *s, const float *Q, const int64_t *p, int nq, int L, double *sel)
{
    size_t d = (size_t)s->ctx.d;
    size_t *n = malloc(sizeof(size_t) * (size_t)nq);
    kv_tk_picker *pk = malloc(sizeof(kv_tk_picker) * (size_t)nq);
    size_t each = kv_tk_bytes((size_t)L);
    char *buf = malloc((size_t)nq * each);
    int bad = !n || !pk || !buf;
    for (int q = 0; !bad && q < nq; q++) {
        n[q] = rows_below(s, p[q]);
        size_t k = (size_t)L < n[q] ? (size_t)L : n[q];
        kv_tk_init(&pk[q], buf + (size_t)q * each, k);
    }
    if (!bad) {
#pragma omp parallel reduction(| : bad) if (nq > 1 && !omp_in_parallel())
        {
            int ng = omp_get_num_threads(), g = omp_get_thread_num();
            float *KT = malloc(sizeof(float) * d * KV_LT), a[KV_LQ * KV_LT], top[KV_LQ];
            size_t mine = 0; /* the longest prefix among this thread's queries */
            for (int q = g; q < nq; q += ng) mine = n[q] > mine ? n[q] : mine;
            bad |= !KT;
            for (size_t r0 = 0; KT && r0 < mine; r0 += KV_LT) {
                kv_lt_pack(s->K + r0 * d, mine - r0 < KV_LT ? mine - r0 : KV_LT, (int)d, KT);
                int qs[KV_LQ], m = 0, act = 0; /* the queries reaching the tile, KV_LQ at a time */
                for (int q = g; q < nq; q += ng) act += r0 < n[q];
                /* the next tile on its way, a share after each group: a burst of
                 * prefetches would wait on the line fill buffers */
                size_t pf = (r0 + KV_LT) * d, pe = (r0 + 2 * KV_LT < mine ? r0 + 2 * KV_LT : mine) * d; /* floats */
                size_t share = ((pe > pf ? pe - pf : 0) / 16 + 1) / (size_t)((act + KV_LQ - 1) / KV_LQ) + 1;
                for (int q = g; q < nq; q += ng) {
                    if (r0 < n[q]) qs[m++] = q;
                    if (m == KV_LQ || (m && q + ng >= nq)) {
                        pick_tile(s, pk, n, qs, m, r0, KT, Q, a, top);
                        m = 0;
                        for (size_t i = 0; i < share && pf < pe; i++, pf += 16) __builtin_prefetch(s->K + pf, 0, 2);
                    }
                }
            }
            free(KT);
        }
    }
    for (int q = 0; !bad && q < nq; q++)
        kv_tk_done(&pk[q], L, sel + (size_t)q * L, s->crow + (size_t)q * L, s->cn + q, s->cout + q);
    free(n);
    free(pk);
    free(buf);
    return bad ? KV_EINTERNAL : KV_OK;
}

static void drop_lists(topk_state *s)
{
    free(s->cq); free(s->cp); free(s->crow); free(s->cn); free(s->cout);
    s->cq = NULL; s->cp = s->crow = s->cn = NULL;
    s->cout = NULL;
    s->cnq = 0;
}

/* keep select's lists for the partial_select of the same batch */
static int keep_lists(topk_state *s, const float *Q, const int64_t *p, int nq, int L)
{
    drop_lists(s);
    size_t d = (size_t)s->ctx.d;
    s->cq = malloc(sizeof(float) * d * (size_t)nq);
    s->cp = malloc(sizeof(int64_t) * (size_t)nq);
    s->crow = malloc(sizeof(int64_t) * (size_t)nq * (size_t)(L ? L : 1));
    s->cn = malloc(sizeof(int64_t) * (size_t)nq);
    s->cout = malloc(sizeof(float) * (size_t)nq);
    if (!s->cq || !s->cp || !s->crow || !s->cn || !s->cout) return KV_EINTERNAL;
    memcpy(s->cq, Q, sizeof(float) * d * (size_t)nq);
    memcpy(s->cp, p, sizeof(int64_t) * (size_t)nq);
    s->cnq = nq;
    return KV_OK;
}

static int topk_select(void *state, const float *Q, const int64_t *p, int nq, double *sel)
{
    topk_state *s = state;
    int L = topk_select_len(s), bad = 0;
    /* the floor of selecting: every key below each prefix, read once for
     * the batch (the longest prefix), one logit (2 d flops) per key */
    double tok = 0, d = s->ctx.d;
    for (int q = 0; q < nq; q++) tok += (double)rows_below(s, p[q]);
    if (nq > 0) kv_cost_add(&s->cost, 1, 4.0 * d * (double)rows_below(s, p[nq - 1]), tok, 2.0 * d * tok);
    if (keep_lists(s, Q, p, nq, L)) {
        drop_lists(s);
        return KV_EINTERNAL;
    }
    if (nq >= BATCH_MIN) {
        bad = select_batch(s, Q, p, nq, L, sel) != KV_OK;
    } else {
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad) if (nq > 1 && !omp_in_parallel())
        for (int q = 0; q < nq; q++)
            bad |= select_one(s, Q + (size_t)q * s->ctx.d, p[q], L, sel + (size_t)q * L, s->crow + (size_t)q * L,
                              s->cn + q, s->cout + q) != KV_OK;
    }
    if (bad) drop_lists(s);
    return bad ? KV_EINTERNAL : KV_OK;
}

/* One query: fold this rank's tokens < p with logit >= thr into st, in row
 * order: select's candidate rows when they hold every such token (every
 * row left out has a logit below thr), else every row below p (a tie at
 * thr beyond the list; or no list).  Either way the same tokens in the
 * same order, so the same sums. */
static int fold_one(const topk_state *s, const float *q, int64_t p, double thr, const int64_t *crow, int64_t cn,
                    float out, double *st)
{
    int dv = s->ctx.dv;
    size_t n = rows_below(s, p);
    kv_partial_clear(st, dv);
    if (!n) return KV_OK;
    float a[LBLK];
    const float *ptr[LBLK];
    double m = -INFINITY, l = 0, l2 = 0, *u = st + KV_PS_U;
    /* the candidates when complete: all rows, or every other logit < thr */
    int use = crow && cn >= 0 && (size_t)cn <= n && ((size_t)cn == n || (double)out < thr);
    size_t nr = use ? (size_t)cn : n;
    for (int pass = 0; pass < 2; pass++) /* the max, then the sums */
        for (size_t b = 0; b < nr; b += LBLK) {
            size_t nt = nr - b < LBLK ? nr - b : LBLK;
            for (size_t t = 0; t < nt; t++) ptr[t] = s->K + (size_t)(use ? (size_t)crow[b + t] : b + t) * (size_t)s->ctx.d;
            logits_rows(q, s->ctx.d, ptr, nt, (float)s->ctx.scale, a);
            for (size_t t = 0; t < nt; t++) {
                if ((double)a[t] < thr) continue;
                if (pass == 0) { m = a[t] > m ? a[t] : m; continue; }
                double e = exp((double)a[t] - m);
                const float *v = s->V + (size_t)(use ? (size_t)crow[b + t] : b + t) * dv;
                l += e;
                l2 += e * e;
                for (int c = 0; c < dv; c++) u[c] += e * v[c];
            }
            if (pass == 1 && m == -INFINITY) break;
        }
    st[KV_PS_M] = m;
    st[KV_PS_L] = l;
    st[KV_PS_L2] = l2;
    return KV_OK;
}

static int topk_partial_select(void *state, const float *Q, const int64_t *p, int nq, const double *gsel, double *st)
{
    topk_state *s = state;
    int L = topk_select_len(s), bad = 0;
    size_t sl = KV_PSTATE_LEN(s->ctx.dv);
    /* the floor of answering from the selection: the values of at most L
     * tokens per query (2 dv flops each); its logits were select's (this
     * implementation recomputes those of the candidates: time/floor shows it) */
    double vals = 0;
    for (int q = 0; q < nq; q++) {
        double n = (double)rows_below(s, p[q]);
        vals += n < L ? n : L;
    }
    kv_cost_add(&s->cost, 1, 4.0 * s->ctx.dv * vals, 0.0, 0.0);
    s->cost.flops += 2.0 * s->ctx.dv * vals;
    /* select's lists, if they were made for these queries */
    int same = s->cnq == nq && nq > 0 && !memcmp(s->cp, p, sizeof(int64_t) * (size_t)nq) &&
               !memcmp(s->cq, Q, sizeof(float) * (size_t)s->ctx.d * (size_t)nq);
#pragma omp parallel for schedule(dynamic, 1) reduction(| : bad) if (nq > 1 && !omp_in_parallel())
    for (int q = 0; q < nq; q++)
        bad |= fold_one(s, Q + (size_t)q * s->ctx.d, p[q], gsel[(size_t)q * L + L - 1],
                        same ? s->crow + (size_t)q * L : NULL, same ? s->cn[q] : -1, same ? s->cout[q] : INFINITY,
                        st + q * sl) != KV_OK;
    drop_lists(s);
    return bad ? KV_EINTERNAL : KV_OK;
}

/* One prefix: select then partial_select with this rank's own lists. */
static int topk_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    return kv_method_partial_by_select(&kv_method_topk, state, Q, nq, p, st);
}

static size_t topk_bytes(const void *state)
{
    const topk_state *s = state;
    return s->cap * row_bytes(s) + s->rcap * sizeof(run);
}

static void topk_cost(const void *state, kv_query_cost *c)
{
    *c = ((const topk_state *)state)->cost;
}

static void topk_extra(const void *state, kv_method_extra *x)
{
    const topk_state *s = state;
    x->clusters = -1;
    x->kept_tokens = (int64_t)s->n;
}

static void topk_free(void *state)
{
    topk_state *s = state;
    if (!s) return;
    free(s->K);
    free(s->V);
    free(s->runs);
    drop_lists(s);
    free(s);
}

/* Rows in stream order, as held, and the run table. */
static void topk_save(const void *state, kv_buf *out)
{
    const topk_state *s = state;
    kv_buf_put_arr(out, s->K, s->n * (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_arr(out, s->V, s->n * (size_t)s->ctx.dv * sizeof(float));
    kv_buf_put_arr(out, s->runs, s->nruns * sizeof(run));
}

static int topk_load(void *state, kv_rd *in, kv_err *err)
{
    topk_state *s = state;
    void *K = NULL, *V = NULL, *R = NULL;
    size_t nk = 0, nv = 0, nr = 0, lim = (size_t)kv_shard_limit(&s->ctx);
    int ok = !kv_rd_arr(in, &K, sizeof(float) * (size_t)s->ctx.d, lim, &nk, err) &&
             !kv_rd_arr(in, &V, sizeof(float) * (size_t)s->ctx.dv, lim, &nv, err) &&
             !kv_rd_arr(in, &R, sizeof(run), lim, &nr, err) && nk == nv && !nk == !nr &&
             kv_all_finite(K, nk * (size_t)s->ctx.d) && kv_all_finite(V, nv * (size_t)s->ctx.dv);
    /* runs: local rows from 0 up, each non-empty, global indices in stream
     * order without overlap, all within the stream */
    const run *rr = R;
    for (size_t r = 0; ok && r < nr; r++) {
        int64_t end = r + 1 < nr ? rr[r + 1].local : (int64_t)nk;
        ok = (r == 0 ? rr[r].local == 0 : rr[r].local > rr[r - 1].local) && end > rr[r].local &&
             end <= (int64_t)nk && rr[r].first >= 0 && rr[r].first <= s->ctx.n_total - (end - rr[r].local) &&
             (r == 0 || rr[r].first >= rr[r - 1].first + (rr[r].local - rr[r - 1].local));
    }
    if (!ok) {
        free(K);
        free(V);
        free(R);
        return err->code ? err->code : kv_seterr(err, KV_EINPUT, "checkpoint: topk state is inconsistent");
    }
    free(s->K);
    free(s->V);
    free(s->runs);
    s->K = K;
    s->V = V;
    s->runs = R;
    s->n = s->cap = nk;
    s->nruns = nr;
    s->rcap = 0;
    /* the capacities an uninterrupted run has: the whole shard once anything
     * is held; runs by doubling from 16 */
    size_t full = (size_t)(s->ctx.shard_tokens > 0 ? s->ctx.shard_tokens : 0);
    if (nk && nk < full && reserve(s, full))
        return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring topk (%zu tokens)", full);
    if (nr) {
        size_t rc = 16;
        while (rc < nr) rc *= 2;
        run *Rn = realloc(s->runs, sizeof(run) * rc);
        if (!Rn) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring topk (%zu runs)", rc);
        s->runs = Rn;
        s->rcap = rc;
    }
    return KV_OK;
}

static int64_t topk_max_bytes(const void *state)
{
    const topk_state *s = state;
    /* rows: the shard, or doubling up to 2n when its size is unknown; runs:
     * at most one per token, doubling from 16 */
    int64_t n = kv_shard_limit(&s->ctx), rows = s->ctx.shard_tokens > 0 ? n : 2 * n, runs = 16;
    while (runs < n) runs *= 2;
    return rows * (int64_t)row_bytes(s) + runs * (int64_t)sizeof(run);
}

const kv_method_ops kv_method_topk = {
    .name = "topk",
    .kind = "oracle",
    .summary = "exact attention over the k largest logits over all ranks (a reference, not a compression)",
    .budget = NULL,
    .params = topk_params,
    .cfg_size = sizeof(topk_cfg),
    .create = topk_create,
    .ingest = topk_ingest,
    .partial = topk_partial,
    .select_len = topk_select_len,
    .select = topk_select,
    .partial_select = topk_partial_select,
    .bytes = topk_bytes,
    .extra = topk_extra,
    .cost = topk_cost,
    .free = topk_free,
    .save = topk_save,
    .load = topk_load,
    .prefix_state = 1,
    .max_bytes = topk_max_bytes,
    .conform = { "k=10", KV_PINV_ROUNDING },
};
