/* quest.c - quest:page=<tokens>,pages=<count> | quest:budget=<X>: Quest's
 * query-aware page selection (Tang et al. 2024; ALGORITHMS.md section 4).
 * It holds every key and value, like exact, and trades reads, not memory.
 *
 * The cache is cut into pages of `page` tokens by global token index (page g
 * = tokens [g page, (g + 1) page)), each with the per-channel min and max of
 * its keys.  Per query at prefix p, a page's upper bound of the logit is
 * scale * sum_c max(q_c min_c, q_c max_c); the `pages` pages with the
 * largest bounds over all ranks are read exactly (the newest page, holding
 * token p - 1, always among them; partial pages count), and the answer is
 * exact attention over their tokens < p.
 *
 * Global selection (method.h: select, partial_select), as topk: each rank
 * lists its pages' keys, the driver keeps the `pages` largest over ranks,
 * and each rank reads its pages whose key is >= the merged list's last.  A
 * key orders pages by their bound rounded to float, ties by the lower page
 * index (the bound's 32 order bits, then 21 bits of the page index, exact in
 * a double), so the pages read do not depend on the rank count.  A page
 * must live on one rank for that: with several ranks the shard chunk must be
 * a multiple of `page` (create refuses otherwise).
 *
 * Reads (the cost hook): the bounds of every page below p (2 d floats each,
 * counted in read_tokens as their size in exact tokens, 2 d / (d + dv)) plus
 * the tokens of the pages read.  Memory: (d + dv) floats per allocated row
 * (the whole shard, as exact), and per page its table entry and bounds. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#include "core/budget.h"
#include "core/hugemem.h"
#include "kernels/dot.h"
#include "kernels/partial.h"
#include "methods/method.h"
#include "methods/quest/quest_fold.h"

typedef struct { int64_t page, pages; kv_budget budget; } quest_cfg;
KV_CFG_FITS(quest_cfg);

static const kv_param_def quest_params[] = {
    KV_PARAM_INT(quest_cfg, page, 16, 1, INT64_C(1) << 20, "tokens per page (by global token index)"),
    KV_PARAM_INT(quest_cfg, pages, 64, 1, INT64_C(1) << 40,
                 "pages a query reads, over all ranks (the newest among them): at most pages x page tokens"),
    KV_PARAM_BUDGET(quest_cfg, budget,
                    "READ budget per query instead of pages (10% of n, 4096tok, bytes of exact tokens): "
                    "pages = ceil(tokens / page); memory is every token regardless"),
    KV_PARAM_TABLE_END
};

extern const kv_method_ops kv_method_quest;

static int quest_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    const quest_cfg *c = cfg;
    if (c->budget.kind && kv_spec_has(spec, "pages"))
        return kv_params_error(quest_params, spec, err, "give pages or budget, not both");
    return KV_OK;
}

static int quest_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const quest_cfg *c = kv_method_cfg(&kv_method_quest, spec, err);
    if (!c) return err->code;
    if (ctx->nranks > 1 && ctx->chunk > 0 && ctx->chunk % c->page)
        return kv_params_error(quest_params, spec, err, "page=%lld must divide the shard chunk (%lld) when ranks > 1, "
                               "so that every page lives on one rank", (long long)c->page, (long long)ctx->chunk);
    int64_t pages = c->pages;
    if (c->budget.kind) {
        int64_t tok = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv) / kv_budget_token_bytes(ctx->d, ctx->dv);
        pages = (tok + c->page - 1) / c->page;
        if (pages < 1)
            return kv_params_error(quest_params, spec, err, "budget reads less than one token per query");
    }
    quest_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->page = c->page;
    s->pages = pages;
    *out = s;
    return KV_OK;
}

/* capacities, functions of the count alone (so a loaded state has the
 * uninterrupted one's): rows the whole shard at once, pages doubled from 16 */
static size_t row_cap(const quest_state *s, size_t need)
{
    if (s->ctx.shard_tokens > 0 && need <= (size_t)s->ctx.shard_tokens) return (size_t)s->ctx.shard_tokens;
    size_t c = 1024;
    while (c < need) c *= 2;
    return c;
}
static size_t page_cap(size_t need)
{
    size_t c = 16;
    while (c < need) c *= 2;
    return c;
}

static int reserve(quest_state *s, size_t rows, size_t pages)
{
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (rows > s->cap) {
        float *K = realloc(s->K, sizeof(float) * d * rows);
        if (K) s->K = K;
        float *V = K ? realloc(s->V, sizeof(float) * dv * rows) : NULL;
        if (V) s->V = V;
        if (!K || !V) return KV_EINTERNAL;
        /* the rows not touched yet on huge pages (core/hugemem.h): fewer
         * faults at ingest, and the fold's scattered pages miss no TLB */
        kv_mem_hugepages(s->K + s->cap * d, sizeof(float) * d * (rows - s->cap));
        kv_mem_hugepages(s->V + s->cap * dv, sizeof(float) * dv * (rows - s->cap));
        s->cap = rows;
    }
    if (pages > s->pcap) {
        qpage *pt = realloc(s->pt, sizeof(qpage) * pages);
        if (pt) s->pt = pt;
        /* pages is a power of two >= 16 (page_cap): whole tiles */
        float *bd = pt ? realloc(s->bd, sizeof(float) * 2 * d * pages) : NULL;
        if (bd) s->bd = bd;
        if (!pt || !bd) return KV_EINTERNAL;
        memset(bd + 2 * d * s->pcap, 0, sizeof(float) * 2 * d * (pages - s->pcap)); /* pages not held yet */
        s->pcap = pages;
    }
    return KV_OK;
}

/* 1 if token i starts a page entry: it does not continue the last one */
static int starts_entry(const quest_state *s, int64_t i)
{
    const qpage *last = s->np ? &s->pt[s->np - 1] : NULL;
    return !last || last->g != i / s->page || last->first + last->cnt != i;
}

/* Account the row just stored at s->n (global index i) in the page table
 * and bounds.  The driver gives tokens in stream order, so a page's rows on
 * a rank are one entry (the only one when the page lives on one rank). */
static void place(quest_state *s, int64_t i)
{
    int d = s->ctx.d;
    const float *k = s->K + s->n * (size_t)d;
    if (!starts_entry(s, i)) {
        size_t j = s->np - 1;
        for (int c = 0; c < d; c++) {
            BD_LO(s, j, c) = k[c] < BD_LO(s, j, c) ? k[c] : BD_LO(s, j, c);
            BD_HI(s, j, c) = k[c] > BD_HI(s, j, c) ? k[c] : BD_HI(s, j, c);
        }
        s->pt[j].cnt++;
        return;
    }
    size_t j = s->np;
    s->pt[j] = (qpage){ i / s->page, i, (int64_t)s->n, 1 };
    for (int c = 0; c < d; c++) BD_LO(s, j, c) = BD_HI(s, j, c) = k[c];
    s->np++;
}

static int quest_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    quest_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    size_t rows = s->n + n > s->cap ? row_cap(s, s->n + n) : s->cap;
    if (reserve(s, rows, s->pcap)) return kv_seterr(err, KV_EINTERNAL, "quest: out of memory holding %zu tokens", rows);
    for (size_t t = 0; t < n; t++) {
        /* the page table doubles only when a page starts: its capacity is a function of the page count */
        if (starts_entry(s, first + (int64_t)t) && s->np == s->pcap && reserve(s, s->cap, page_cap(s->np + 1)))
            return kv_seterr(err, KV_EINTERNAL, "quest: out of memory holding %zu pages", s->np + 1);
        memcpy(s->K + s->n * d, K + t * d, sizeof(float) * d);
        memcpy(s->V + s->n * dv, V + t * dv, sizeof(float) * dv);
        place(s, first + (int64_t)t);
        s->n++;
    }
    return KV_OK;
}

/* order bits of a float: increasing with its value */
static uint64_t ord32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u >> 31) ? (uint64_t)~u : (uint64_t)(u | 0x80000000u);
}

/* Per query, where each channel's bound term is read within a tile:
 * max(q_c min_c, q_c max_c) is q_c max_c when q_c >= 0 (-0 too) and q_c
 * min_c otherwise, bitwise, the products being exact in double (a signed
 * zero can differ, which the sum, never -0 itself, does not see). */
void kv_quest_bound_offsets(int d, const float *q, size_t *off)
{
    for (int c = 0; c < d; c++) off[c] = ((q[c] >= 0 ? (size_t)d : 0) + (size_t)c) * PT;
}

/* The keys of the pages of tile t below table index n (see the header) for
 * query q at prefix p into key[0..PT).  Each page's bound is its double
 * sum over the channels in order, as the scalar formula; the pages of the
 * tile are the vector lanes.  A page cut by p is bounded over its rows < p
 * (only the newest is, and it gets NEWEST), so the key is what partial
 * would see at p. */
void kv_quest_tile_keys(const quest_state *s, size_t t, size_t n, const float *q, const size_t *off, int64_t p,
                        double *key)
{
    int d = s->ctx.d;
    const float *T = s->bd + t * 2 * (size_t)d * PT;
    double b[PT];
    for (int i = 0; i < PT; i++) b[i] = 0;
    for (int c = 0; c < d; c++) {
        const float *x = T + off[c];
        double qc = q[c];
        for (int i = 0; i < PT; i++) b[i] += qc * (double)x[i];
    }
    int64_t newest = (p - 1) / s->page;
    for (size_t i = 0; i < PT && t * PT + i < n; i++) {
        const qpage *pg = &s->pt[t * PT + i];
        if (pg->g == newest) {
            key[i] = NEWEST;
            continue;
        }
        float bf = (float)(b[i] * s->ctx.scale);
        if (isnan(bf)) bf = INFINITY;
        uint64_t tie = ((UINT64_C(1) << TIE_BITS) - 1) - ((uint64_t)pg->g & ((UINT64_C(1) << TIE_BITS) - 1));
        key[i] = (double)((ord32(bf) << TIE_BITS) | tie);
    }
}

static int quest_select_len(const void *state)
{
    const quest_state *s = state;
    int64_t L = s->pages, all = (s->ctx.n_total + s->page - 1) / s->page;
    if (s->ctx.n_total > 0 && L > all) L = all; /* a list of every page suffices */
    return L > INT32_MAX ? INT32_MAX : L < 1 ? 1 : (int)L;
}

/* a min-heap of pages on the key: the L largest seen */
static void heap_down(pcand *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < n && h[l].key < h[m].key) m = l;
        if (l + 1 < n && h[l + 1].key < h[m].key) m = l + 1;
        if (m == i) return;
        pcand t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
}

static void heap_up(pcand *h, size_t i)
{
    while (i && h[(i - 1) / 2].key > h[i].key) {
        pcand t = h[i]; h[i] = h[(i - 1) / 2]; h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}

static void drop_lists(quest_state *s)
{
    free(s->cq); free(s->cp); free(s->cn); free(s->cl); free(s->cout);
    s->cq = NULL; s->cp = s->cn = NULL; s->cl = NULL; s->cout = NULL;
    s->cnq = 0;
}

/* Per query: its L largest page keys, descending, into sel (padded with
 * -inf: the same list a sort of every key gives), the pages holding them
 * into the kept lists, and the largest key left out.  A tile of bounds at
 * a time for all the queries (each thread its queries, interleaved), so a
 * tile is read once per batch and from L1 by each query; a key enters a
 * query's heap only when above its least (equal ones change no value of
 * the list). */
static int select_all(quest_state *s, const float *Q, const int64_t *p, int nq, int L, double *sel)
{
    int d = s->ctx.d;
    size_t maxn = 0, *n = malloc(sizeof(size_t) * (size_t)nq), *off = malloc(sizeof(size_t) * (size_t)nq * d);
    size_t *hn = calloc((size_t)nq, sizeof(size_t));
    if (!n || !off || !hn) {
        free(n); free(off); free(hn);
        return KV_EINTERNAL;
    }
    for (int q = 0; q < nq; q++) {
        n[q] = quest_pages_below(s, p[q]);
        maxn = n[q] > maxn ? n[q] : maxn;
        kv_quest_bound_offsets(d, Q + (size_t)q * d, off + (size_t)q * d);
        s->cout[q] = -INFINITY;
    }
#pragma omp parallel if (nq > 1 && !omp_in_parallel())
    {
        int ng = omp_get_num_threads();
#pragma omp for schedule(static, 1)
        for (int g = 0; g < ng; g++)
            for (size_t t = 0; t * PT < maxn; t++)
                for (int q = g; q < nq; q += ng) {
                    if (t * PT >= n[q]) continue;
                    double key[PT];
                    kv_quest_tile_keys(s, t, n[q], Q + (size_t)q * d, off + (size_t)q * d, p[q], key);
                    pcand *h = s->cl + (size_t)q * L;
                    double *om = &s->cout[q];
                    for (size_t i = 0; i < PT && t * PT + i < n[q]; i++) {
                        pcand c = { key[i], (int64_t)(t * PT + i) };
                        if (hn[q] < (size_t)L) {
                            h[hn[q]] = c;
                            heap_up(h, hn[q]++);
                        } else if (c.key > h[0].key) {
                            *om = h[0].key > *om ? h[0].key : *om; /* the page it replaces leaves the list */
                            h[0] = c;
                            heap_down(h, (size_t)L, 0);
                        } else {
                            *om = c.key > *om ? c.key : *om;
                        }
                    }
                }
    }
    for (int q = 0; q < nq; q++) { /* heapsort in place: the list descending */
        pcand *h = s->cl + (size_t)q * L;
        double *sq = sel + (size_t)q * L;
        for (size_t i = hn[q]; i-- > 1;) {
            pcand t = h[0]; h[0] = h[i]; h[i] = t;
            heap_down(h, i, 0);
        }
        for (size_t i = 0; i < hn[q]; i++) sq[i] = h[i].key;
        for (int i = (int)hn[q]; i < L; i++) sq[i] = -INFINITY;
        s->cn[q] = (int64_t)hn[q];
    }
    free(n);
    free(off);
    free(hn);
    return KV_OK;
}

/* keep select's lists for the partial_select of the same batch */
static int keep_lists(quest_state *s, const float *Q, const int64_t *p, int nq, int L)
{
    drop_lists(s);
    size_t d = (size_t)s->ctx.d;
    s->cq = malloc(sizeof(float) * d * (size_t)nq);
    s->cp = malloc(sizeof(int64_t) * (size_t)nq);
    s->cn = malloc(sizeof(int64_t) * (size_t)nq);
    s->cl = malloc(sizeof(pcand) * (size_t)nq * (size_t)L);
    s->cout = malloc(sizeof(double) * (size_t)nq);
    if (!s->cq || !s->cp || !s->cn || !s->cl || !s->cout) return KV_EINTERNAL;
    memcpy(s->cq, Q, sizeof(float) * d * (size_t)nq);
    memcpy(s->cp, p, sizeof(int64_t) * (size_t)nq);
    s->cnq = nq;
    return KV_OK;
}

static int quest_select(void *state, const float *Q, const int64_t *p, int nq, double *sel)
{
    quest_state *s = state;
    int L = quest_select_len(s);
    int rc = nq > 0 && keep_lists(s, Q, p, nq, L) ? KV_EINTERNAL : KV_OK;
    if (!rc && nq > 0) rc = select_all(s, Q, p, nq, L, sel);
    if (rc) drop_lists(s);
    return rc;
}

static int quest_partial_select(void *state, const float *Q, const int64_t *p, int nq, const double *gsel, double *st)
{
    quest_state *s = state;
    int L = quest_select_len(s);
    size_t sl = KV_PSTATE_LEN(s->ctx.dv);
    kv_query_cost *c = calloc((size_t)(nq > 0 ? nq : 1), sizeof *c);
    int bad = 0;
    if (!c) {
        drop_lists(s);
        return KV_EINTERNAL;
    }
    /* select's lists, if they were made for these queries */
    int same = s->cnq == nq && nq > 0 && !memcmp(s->cp, p, sizeof(int64_t) * (size_t)nq) &&
               !memcmp(s->cq, Q, sizeof(float) * (size_t)s->ctx.d * (size_t)nq);
#pragma omp parallel reduction(| : bad) if (nq > 1 && !omp_in_parallel())
    {
        kv_quest_scratch w = { 0 };
#pragma omp for schedule(dynamic, 1)
        for (int q = 0; q < nq; q++)
            bad |= kv_quest_fold_one(s, Q + (size_t)q * s->ctx.d, p[q], gsel[(size_t)q * L + L - 1],
                            same ? s->cl + (size_t)q * L : NULL, same ? s->cn[q] : -1, same ? s->cout[q] : INFINITY,
                            st + q * sl, &c[q], &w) != KV_OK;
        free(w.pg);
        free(w.a);
        free(w.bit);
    }
    for (int q = 0; q < nq; q++) { /* in query order: the sums do not depend on the threads */
        s->cost.read_bytes += c[q].read_bytes;
        s->cost.read_tokens += c[q].read_tokens;
        s->cost.flops += c[q].flops;
    }
    free(c);
    drop_lists(s);
    return bad ? KV_EINTERNAL : KV_OK;
}

/* One prefix: select then partial_select with this rank's own lists. */
static int quest_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    return kv_method_partial_by_select(&kv_method_quest, state, Q, nq, p, st);
}

static size_t page_bytes(const quest_state *s) { return sizeof(qpage) + 2 * sizeof(float) * (size_t)s->ctx.d; }

static size_t quest_bytes(const void *state)
{
    const quest_state *s = state;
    return s->cap * (size_t)(s->ctx.d + s->ctx.dv) * sizeof(float) + s->pcap * page_bytes(s);
}

static void quest_extra(const void *state, kv_method_extra *x)
{
    const quest_state *s = state;
    x->clusters = -1;
    x->kept_tokens = (int64_t)s->n;
}

static void quest_cost(const void *state, kv_query_cost *c)
{
    *c = ((const quest_state *)state)->cost;
}

static void quest_free(void *state)
{
    quest_state *s = state;
    if (!s) return;
    free(s->K);
    free(s->V);
    free(s->pt);
    free(s->bd);
    drop_lists(s);
    free(s);
}

/* The rows in stream order and their global indices as runs (the page
 * table and bounds are rebuilt from them on load). */
static void quest_save(const void *state, kv_buf *out)
{
    const quest_state *s = state;
    kv_buf_put_arr(out, s->K, s->n * (size_t)s->ctx.d * sizeof(float));
    kv_buf_put_arr(out, s->V, s->n * (size_t)s->ctx.dv * sizeof(float));
    kv_buf_put_arr(out, s->pt, s->np * sizeof(qpage));
}

static int quest_load(void *state, kv_rd *in, kv_err *err)
{
    quest_state *s = state;
    void *K = NULL, *V = NULL, *P = NULL;
    size_t nk = 0, nv = 0, np = 0, lim = (size_t)kv_shard_limit(&s->ctx), d = (size_t)s->ctx.d;
    int ok = !kv_rd_arr(in, &K, sizeof(float) * d, lim, &nk, err) &&
             !kv_rd_arr(in, &V, sizeof(float) * (size_t)s->ctx.dv, lim, &nv, err) &&
             !kv_rd_arr(in, &P, sizeof(qpage), lim, &np, err) && nk == nv && !nk == !np &&
             kv_all_finite(K, nk * d) && kv_all_finite(V, nv * (size_t)s->ctx.dv);
    /* pages: increasing, each inside its page and the stream, rows contiguous from 0 */
    const qpage *pt = P;
    int64_t row = 0;
    for (size_t j = 0; ok && j < np; j++) {
        const qpage *x = &pt[j];
        ok = x->g >= 0 && (j == 0 || x->g > pt[j - 1].g) && x->cnt >= 1 && x->cnt <= s->page && x->row == row &&
             x->g <= s->ctx.n_total / s->page && x->first >= x->g * s->page &&
             x->first - x->g * s->page <= s->page - x->cnt && x->first <= s->ctx.n_total - x->cnt;
        row += ok ? x->cnt : 0;
    }
    ok = ok && row == (int64_t)nk;
    if (ok) { /* rebuild by placing the rows again */
        s->n = s->np = 0;
        ok = !reserve(s, nk ? row_cap(s, nk) : 0, np ? page_cap(np) : 0);
        if (!ok) kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring quest (%zu tokens)", nk);
        if (ok && nk) {
            memcpy(s->K, K, sizeof(float) * d * nk);
            memcpy(s->V, V, sizeof(float) * (size_t)s->ctx.dv * nk);
        }
        for (size_t j = 0; ok && j < np; j++)
            for (int64_t t = 0; t < pt[j].cnt; t++, s->n++) place(s, pt[j].first + t);
    }
    free(K);
    free(V);
    free(P);
    if (!ok) return err->code ? err->code : kv_seterr(err, KV_EINPUT, "checkpoint: quest state is inconsistent");
    return KV_OK;
}

static int64_t quest_max_bytes(const void *state)
{
    const quest_state *s = state;
    /* rows: the shard, or doubling up to 2n when its size is unknown; pages:
     * at most one per token, doubled from 16 */
    int64_t n = kv_shard_limit(&s->ctx), rows = s->ctx.shard_tokens > 0 ? n : 2 * n;
    return rows * (int64_t)(s->ctx.d + s->ctx.dv) * 4 + (int64_t)page_cap((size_t)n + 2) * (int64_t)page_bytes(s);
}

const kv_method_ops kv_method_quest = {
    .name = "quest",
    .kind = "oracle",
    .summary = "Quest: per query, exact attention over the pages with the largest key-bound logits (reads, not memory)",
    .budget = "budget= bounds what a query reads (pages = ceil(tokens / page)), not memory: every token and page bound is held",
    .params = quest_params,
    .cfg_size = sizeof(quest_cfg),
    .check = quest_check,
    .create = quest_create,
    .ingest = quest_ingest,
    .partial = quest_partial,
    .select_len = quest_select_len,
    .select = quest_select,
    .partial_select = quest_partial_select,
    .bytes = quest_bytes,
    .extra = quest_extra,
    .free = quest_free,
    .save = quest_save,
    .load = quest_load,
    .max_bytes = quest_max_bytes,
    .prefix_state = 1,
    .cost = quest_cost,
    .conform = { "page=16,pages=3;page=5,pages=100000;page=1,budget=2%", KV_PINV_ROUNDING, KV_SEM_FULL, 1 },
};
