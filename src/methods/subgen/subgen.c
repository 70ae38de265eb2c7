/* subgen/subgen.c - SubGen (Zandieh, Han, Mirrokni, Karbasi 2024), a
 * sublinear-memory streaming estimate of softmax attention (ALGORITHMS.md
 * section 2).  Spec: subgen[:delta=<radius>,t=<keys per cluster>,s=<samplers>
 * ,seed=<n>,index=0|1,clusters=<cap>|budget=<X>,estimator=paper|joint], each optional
 * (defaults: kv_subgen_params below).
 *
 * Two structures, both updated once per arriving token (k, v):
 *  1. Online clustering of keys for the denominator.  k joins the nearest
 *     centre within Euclidean distance delta (<= delta, ties to the lowest
 *     index), else opens a cluster whose centre is k.  Each cluster keeps its
 *     count n_c and a uniform reservoir of at most t of its keys.
 *         sum_i e^{a_i} ~ sum_c (n_c / |sample_c|) sum_{k in sample_c} e^{a(k)}
 *  2. s independent l2 samplers of (k, v) pairs, pair i drawn with
 *     probability |v_i|^2 / F, F = sum |v_i|^2 (src/methods/common/sampler.h), for the
 *     numerator:
 *         sum_i e^{a_i} v_i ~ (1/s) sum_j e^{a(k_j)} v_j F / |v_j|^2.
 *     While at most s tokens with v != 0 have arrived we also hold them all
 *     (the "exact buffer") and answer the numerator exactly from it; the
 *     buffer is dropped for good when the (s+1)-th arrives.  So delta = 0,
 *     t >= n, s >= n on distinct keys reproduces exact attention.
 * estimator=joint (joint=1; our estimator, not the paper's): the reservoirs store each
 * sampled key's value too, there are no l2 samples and no exact buffer, and
 * numerator and denominator come from the same stratified sample:
 *     l = sum_c (n_c / |R_c|) sum_{k in R_c} e^{a(k)}
 *     u = sum_c (n_c / |R_c|) sum_{(k,v) in R_c} e^{a(k)} v
 * (the stratified ratio estimator).  The l2 samples are query-blind: when
 * most attention falls on a few clusters they spend their budget on tokens
 * the query ignores, while a cluster's own samples are where the mass is.
 * delta = 0, t >= n (distinct keys or not) is exact.  The theorem below
 * covers joint=0 only.
 * Guarantee (their theorem): if the keys are (m, delta)-clusterable, r bounds
 * scale*|q|, t = O(eps^-2 e^{2 delta r} log n) and s = O(eps^-2 d), then
 * |z - z*| <= eps |softmax(a)|_2 |V|_op with high probability, in memory
 * O(d (m t + s)): sublinear when m = o(n).
 *
 * Per query, partial() returns ONE weighted partial state (m, l, 0, u) with a
 * common max m over every logit used; the cross-rank merge sums l and u, so
 * the sum of the ranks' estimates is the estimate of the whole stream.
 *
 * Ranks.  t, s and clusters are totals over ranks: rank r runs its own
 * sketch of its shard with t_r, s_r, cap_r = kv_rank_share (ceil(x shard_r /
 * n), at least 1; x / P when the shard is unknown), so the sums exceed the
 * totals by at most P from rounding.  What distribution costs: centres are
 * per rank, and under chunk-cyclic sharding every rank sees every natural
 * cluster, so P ranks hold up to P copies of a centre and its neighbourhood:
 * at a fixed cap (or budget) the distinct clusters held shrink to about cap
 * / P, each centre's slot (d floats and the index entry) is paid P times,
 * and each copy's reservoir is only t_r ~ t / P keys.  The l2 samples split
 * without loss (s_r samplers per shard draw the same total); every rank also
 * pays the fixed part (struct, the 16 x d index projection).  bytes() counts
 * all of it.
 *
 * Cluster cap (rank r: cap_r).  When a key matches no centre within delta
 * and the rank holds cap_r clusters, delta doubles and clusters merge (the
 * doubling rule of online k-centre, Charikar, Chekuri, Feder, Motwani 1997):
 * centres in index order each join the nearest earlier kept centre within
 * the new delta, else are kept; counts add and reservoirs merge exactly by
 * weighted sampling without replacement (merge_reservoirs).  Repeated until
 * the key joins a centre or a slot is free; each further round takes delta
 * to at least the least distance among the kept centres and the key, so it
 * makes progress.  A round costs O(cap_r^2 d / 16) vector operations
 * (float distances with an error bound, exact double distances only where
 * the bound cannot decide: the decisions of an exact scan, identical for
 * index=0/1), and delta only grows, so there are O(log(diameter / delta))
 * rounds over the whole stream; other tokens cost O(cap_r d) as before.
 * Kept centres stay first keys, so the index's bound (nnd, recomputed from
 * the merge's lower bounds) stays valid.  Without clusters= or budget= the
 * cap is also at most what fits in half of exact's memory for the shard
 * (default_cap_half), so no delta and no data can make the clusters hold
 * more than that.
 *
 * budget=X (core/budget.h, not with s= or clusters=; t= allowed): rank r
 * gets B_r = floor(B shard_r / n) of B = kv_budget_bytes (B / P if the shard
 * is unknown), so the shares sum to <= B at any rank count.  After the fixed
 * part, half goes to l2 samples at sample_bytes each (key + value, the
 * exact buffer's row that lives on top of them until the (s+1)-th valued
 * token, sampler bookkeeping) and half to clusters at slot_bytes per
 * allocated slot (slots come in blocks of 16) plus t_r reservoir keys each;
 * s_r and cap_r are what fits (budget_rule).  joint=1: all of it goes to
 * clusters, t_r reservoir keys and values each, t_r = floor(sqrt(R / 2))
 * of the R rows that fit unless t= is given (so the cap is about 2 t_r).  All capacities are clamped to
 * them, so bytes() <= B_r at every step.
 *
 * Finding the nearest centre: centres are stored in transposed blocks of 16
 * with |c|^2, and a scan computes |k|^2 - 2<k,c> + |c|^2 in float, 16 centres
 * per SIMD multiply-add, in an order that is fixed per (key, centre) (so
 * results never depend on alignment, batching or thread count).  When most
 * tokens need a scan, 4 upcoming keys are scanned in one pass over the
 * centres (multiply-add bound instead of L2 bound); the scan runs in OpenMP
 * chunks when it is long and we are not already in a parallel region (the
 * replay driver may ingest different streams from parallel threads).  The
 * candidate is confirmed by an exact double distance.
 * With index=1 (default) most scans are skipped: a guess c0 (the previous
 * token's cluster, else the nearest centre in a 16-dim random projection) is
 * accepted when 2|k - c0| plus a rounding margin is below a lower bound of
 * the distance from c0 to its nearest other centre; by the triangle inequality
 * every other centre is then farther by more than the scan's rounding error,
 * so the scan would have chosen c0 too: the result is bitwise the same as
 * with index=0, only faster on well separated clusters.
 *
 * Queries are answered 16 at a time, one per SIMD lane (partial() gives the
 * same bits for a query alone or in any batch).
 *
 * Memory (bytes()): everything allocated, at capacity: per cluster slot
 * (ccap, 64 doubled up to the cap rounded to 16) the centre, |c|^2, the
 * cluster record, the scan distance and scan-ahead rows, the index entry
 * (16 projected floats, nnd); the reservoir keys held (allocated exactly);
 * the s l2 samples (d + dv floats each, allocated at create) with the sampler
 * bookkeeping and offer scratch; the exact buffer's allocated rows (64
 * doubled, at most s) while it lives; the fixed struct and 16 x d
 * projection.  max_bytes() is that sum when every token of the shard opens
 * its own cluster (up to the cap) and the exact buffer is full while the
 * samples are held: reached exactly on distinct keys with delta = 0, s >= n.
 *
 * Checkpoints (save.c): the state that decides later results is saved and
 * checked on load; the block layout, the projected centres and the derived
 * maxima are rebuilt bit for bit, so a resumed run is bitwise the same as an
 * uninterrupted one.
 *
 * Files (src/methods/subgen/): this one has the method's table, parameters,
 * budget rule, capacities and memory; index.c the nearest centre; kcentre.c
 * the cluster cap; ingest.c the per-token update; estim.c the estimates;
 * save.c the checkpoints; state.h the state they share.  The fixed-order
 * kernels are kernels/lanes16.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/search.h"
#include "methods/subgen/state.h"

/* ---- growth ------------------------------------------------------------ */

/* Capacities are a function of what is held (64 doubled, clamped), so that a
 * checkpoint restores the same bytes() and max_bytes() can name the worst. */
static int64_t cap_for(int64_t need, int64_t clamp)
{
    int64_t c = 64;
    if (need >= clamp) return clamp; /* also: no overflow on a malformed checkpoint's need */
    while (c < need) c *= 2;
    return c < clamp ? c : clamp;
}

/* per-cluster arrays are allocated for whole blocks of CB, up to the cap */
int64_t sg_ccap_for(const subgen *g, int64_t need)
{
    return cap_for(need, (g->cap + CB - 1) / CB * CB);
}

/* the exact buffer never holds more than s rows */
int64_t sg_bcap_for(const subgen *g, int64_t need) { return cap_for(need, g->s); }

/* Bytes of one allocated cluster slot besides its keys: centre, |c|^2,
 * cluster record, scan distance, GK scan-ahead rows, index (projected
 * centre, nnd).  The unit of the cluster part of the budget rule. */
int64_t sg_slot_bytes(int d, int use_index)
{
    int64_t f = (int64_t)sizeof(float);
    return (int64_t)d * f + f + (int64_t)sizeof(cluster) + f + GK * f +
           (use_index ? NP * f + (int64_t)sizeof(double) : 0);
}

/* ---- method ops -------------------------------------------------------- */

/* free the clusters and every per-cluster array (keys, centres, index) */
void sg_free_clusters(subgen *g)
{
    for (int64_t c = 0; c < g->nc; c++) {
        free(g->cl[c].keys);
        free(g->cl[c].vals);
    }
    free(g->cent);
    free(g->cnorm);
    free(g->cl);
    free(g->dist);
    free(g->cproj);
    free(g->nnd);
    free(g->pre);
    g->cent = g->cnorm = g->dist = g->cproj = g->pre = NULL;
    g->cl = NULL;
    g->nnd = NULL;
    g->nc = g->ccap = g->pre_cap = g->nres = 0;
}

static void subgen_free(void *state)
{
    subgen *g = state;
    if (!g) return;
    sg_free_clusters(g);
    free(g->proj);
    kv_l2_clear(&g->l2);
    free(g->sk);
    free(g->sv);
    free(g->take);
    free(g->bk);
    free(g->bv);
    free(g);
}

/* Defaults: delta = 1 joins keys within distance 1 of a cluster's first key,
 * i.e. clusters whose members are about sigma sqrt(2d) <= 1 apart (docs/USER_GUIDE.md
 * "Choosing SubGen's parameters"), t = 16 is inside the 8-64 that works in
 * practice, s = 256 = O(eps^-2 d) for head dimensions up to 128 at eps ~
 * 0.7; the cluster cap 1024 keeps the clusters' memory flat in n however
 * small delta is (about 1024 (t d + d + 28) 4 bytes per stream) and a merge
 * round at about 1024^2 d / 16 vector operations, and the memory rule
 * (default_cap_half) keeps it within half of exact's at any n, delta and
 * data.  Data with more natural clusters than the cap needs clusters= (at
 * the cap delta grows past the cluster spacing and clusters merge).  The exact regime (delta = 0, t, s >= n) needs clusters >= n given. */
KV_CFG_FITS(kv_subgen_cfg);
const kv_param_def kv_subgen_params[] = {
    KV_PARAM_DOUBLE(kv_subgen_cfg, delta, 1.0, 0.0, DBL_MAX,
                    "join distance in key units: above the member distance sigma*sqrt(2d), delta*r <~ 1"),
    KV_PARAM_INT_DERIVED(kv_subgen_cfg, t, -1, "16", 1, INT32_MAX,
                         "keys sampled per cluster, over all ranks (8-64 in practice; estimator=joint with budget=: "
                         "sqrt(rows that fit / 2))"),
    KV_PARAM_INT(kv_subgen_cfg, s, 256, 1, 1 << 24, "l2 samples of values for the numerator, over all ranks (O(eps^-2 d))"),
    KV_PARAM_INT_DERIVED(kv_subgen_cfg, seed, -1, "--seed", 0, INT64_MAX,
                         "sampling seed (stream and rank are mixed in)"),
    KV_PARAM_INT(kv_subgen_cfg, index, 1, 0, 1, "1: skip centre scans by a bound that picks the same cluster (same results)"),
    KV_PARAM_INT_DERIVED(kv_subgen_cfg, clusters, -1, "1024", 1, INT64_C(1) << 40,
                         "cluster cap over all ranks (default 1024, at most what fits in half of exact's memory): at it delta doubles, clusters merge"),
    KV_PARAM_BUDGET(kv_subgen_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of s and clusters"),
    KV_PARAM_ENUM(kv_subgen_cfg, estimator, "paper|joint", 0,
                  "paper: the theorem's (l2-sampled numerator); joint: cluster samples carry values (no s)"),
    KV_PARAM_INT(kv_subgen_cfg, joint, 0, 0, 1, "older spelling of estimator: 0 paper, 1 joint"),
    KV_PARAM_TABLE_END
};

int kv_subgen_check(kv_subgen_cfg *c, const kv_param_def *defs, const kv_spec *spec, kv_err *err)
{
    if (kv_spec_has(spec, "estimator") && kv_spec_has(spec, "joint") && c->estimator != c->joint)
        return kv_params_error(defs, spec, err, "estimator=%s and joint=%lld disagree (joint= is its older spelling)",
                               c->estimator ? "joint" : "paper", (long long)c->joint);
    if (kv_spec_has(spec, "estimator")) c->joint = c->estimator;
    c->estimator = c->joint;
    if (c->budget.kind && (kv_spec_has(spec, "s") || kv_spec_has(spec, "clusters")))
        return kv_params_error(defs, spec, err, "give s and clusters or budget, not both");
    if (c->joint && kv_spec_has(spec, "s"))
        return kv_params_error(defs, spec, err, "estimator=joint keeps no l2 samples: s does not apply");
    return KV_OK;
}

static int subgen_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    return kv_subgen_check(cfg, kv_subgen_params, spec, err);
}

static int subgen_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    *out = NULL;
    const kv_subgen_cfg *c = kv_method_cfg(&kv_method_subgen, spec, err);
    if (!c) return err->code;
    return kv_subgen_new(c, spec->text, ctx, out, err);
}

/* What a rank holds whatever it has seen: the struct, the projection, F. */
static int64_t fixed_bytes(int d, int use_index)
{
    return (int64_t)sizeof(subgen) + (int64_t)sizeof(double) + (use_index ? NP * (int64_t)d * (int64_t)sizeof(float) : 0);
}

/* Per l2 sample: its key and value, the exact buffer's row (alive until the
 * (s+1)-th valued token, while the samples are held too), the sampler's id,
 * weight, threshold and heap slot, the offer scratch. */
static int64_t sample_bytes(int d, int dv)
{
    return 2 * (int64_t)(d + dv) * (int64_t)sizeof(float) + (int64_t)(kv_l2_bytes(&(kv_l2_sampler){ .s = 1 }) - sizeof(double)) +
           (int64_t)sizeof(int);
}

/* Budget rule (budget=X, B = kv_budget_bytes: bytes per stream over all
 * ranks).  Rank r gets its shard's share B_r = floor(B shard_r / n) (B / P
 * when the shard is unknown), so the shares add up to at most B at any rank
 * count.  Minus the fixed part, half goes to the l2 samples (sample_bytes
 * each, the exact buffer included) and half to clusters: a cluster costs its
 * slot (slot_bytes, allocated in blocks of CB) and t_r reservoir keys.  The
 * rank's s and cluster cap are what fits; everything it allocates is within
 * those capacities, so bytes() <= B_r at every step. */
static int budget_rule(const kv_budget *b, int64_t *t_r, int use_index, int joint, const char *text,
                       const kv_method_ctx *ctx, int64_t *s_r, int64_t *cap_r, kv_err *err)
{
    int d = ctx->d, dv = ctx->dv;
    int64_t B = kv_budget_bytes(b, ctx->n_total, d, dv), Br;
    if (ctx->shard_tokens > 0 && ctx->n_total > 0)
        Br = (int64_t)((__int128)B * ctx->shard_tokens / ctx->n_total);
    else
        Br = B / (ctx->nranks > 0 ? ctx->nranks : 1);
    /* joint: no l2 samples, the clusters get it all, each sample a key and
     * its value.  Without t=, t_r = sqrt(R / 2) of the R rows that fit, so
     * the cap is about 2 t_r: neither the cluster count m nor the sizes are
     * known, and a cap below m is the costly mistake (delta doubles until
     * clusters merge across the natural ones), a cap above m only leaves
     * rows unused (docs/USER_GUIDE.md: measured on the demo trace) */
    int64_t avail = Br - fixed_bytes(d, use_index), bs = joint ? 0 : avail / 2, bc = avail - bs;
    int64_t row = (int64_t)(joint ? d + dv : d) * (int64_t)sizeof(float);
    if (*t_r < 1) *t_r = bc > 2 * row ? (int64_t)sqrt((double)(bc / row) / 2.0) : 1;
    int64_t key = *t_r * row, slot = sg_slot_bytes(d, use_index);
    int64_t s = bs > 0 ? bs / sample_bytes(d, dv) : 0, c = bc > 0 ? bc / (key + slot) : 0;
    while (c > 0 && c * key + (c + CB - 1) / CB * CB * slot > bc) c--;
    if (s > (1 << 24)) s = 1 << 24; /* the parameter's own range */
    if ((!joint && s < 1) || c < 1) {
        int64_t need = fixed_bytes(d, use_index) + 2 * (sample_bytes(d, dv) > key + CB * slot ? sample_bytes(d, dv) : key + CB * slot);
        return kv_seterr(err, KV_EINPUT, "--methods: %s: budget of %lld bytes leaves rank %d of %d %lld bytes, "
                         "less than one sample and one cluster (%lld bytes)", text, (long long)B, ctx->rank,
                         ctx->nranks, (long long)Br, (long long)need);
    }
    *s_r = s;
    *cap_r = c;
    return KV_OK;
}

/* The default cap's memory rule: the most clusters (a multiple of CB, at
 * least CB) whose slots and full reservoirs (t_r rows each, as the budget
 * rule counts them) fit in half of what exact holds for this rank's shard,
 * n_r (d + dv) 4 bytes (slots counted with the index, so that index=0
 * and 1 get the same cap and the same results).  So with no parameters the clusters can never take
 * more than half of exact's memory, whatever delta and the data are; the
 * l2 part (s samples and the exact buffer) adds s (2 (d + dv) 4 + ...)
 * bytes, within the other half when s <= n / 4. */
static int64_t default_cap_half(const kv_method_ctx *ctx, int64_t t_r, int joint)
{
    int64_t n = kv_shard_limit(ctx), d = ctx->d, dv = ctx->dv;
    double half = 0.5 * (double)n * (double)(d + dv) * sizeof(float);
    double per = (double)t_r * (double)(joint ? d + dv : d) * sizeof(float) + (double)sg_slot_bytes((int)d, 1);
    double c = floor(half / per / CB) * CB;
    if (c > (double)(INT64_C(1) << 40)) c = (double)(INT64_C(1) << 40);
    return c < CB ? CB : (int64_t)c;
}

int kv_subgen_new(const kv_subgen_cfg *c, const char *text, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    int joint = (int)c->joint;
    /* t < 0 (not given): 16, or left to the budget rule with joint */
    int64_t t = c->t > 0 ? kv_rank_share(ctx, c->t) : joint && c->budget.kind ? 0 : kv_rank_share(ctx, 16);
    int64_t seed = c->seed, index = c->index, s = 0, cap = 0;
    *out = NULL;
    if (ctx->d < 1 || ctx->dv < 1)
        return kv_seterr(err, KV_EINPUT, "--methods: %s: needs d >= 1 and dv >= 1", text);
    if (ctx->semantics != KV_SEM_FULL)
        return kv_seterr(err, KV_EINPUT, "--methods: %s: subgen estimates full attention only", text);
    if (c->budget.kind) {
        if (budget_rule(&c->budget, &t, (int)index, joint, text, ctx, &s, &cap, err)) return err->code;
    } else {
        int64_t C = c->clusters;
        s = joint ? 0 : kv_rank_share(ctx, c->s);
        if (s > (1 << 24)) s = 1 << 24;
        if (C < 0) { /* derived default (see the table) */
            cap = kv_rank_share(ctx, 1024);
            int64_t half = default_cap_half(ctx, t, joint);
            if (half < cap) cap = half;
        } else
            cap = kv_rank_share(ctx, C);
    }
    if (t > INT32_MAX) t = INT32_MAX; /* the parameter's range (a huge budget's sqrt) */
    subgen *g = kv_calloc(1, sizeof *g, err);
    if (!g) return err->code;
    g->ctx = *ctx;
    g->delta = g->delta0 = c->delta;
    g->delta2 = c->delta * c->delta;
    g->t = t;
    g->s = (int)s;
    g->cap = cap;
    g->use_index = (int)index;
    g->joint = joint;
    g->last = -1;
    g->buf_on = !joint; /* joint: the reservoirs answer the numerator, exact or not */
    /* seed=<n> replaces --seed; stream and rank are mixed in either way */
    kv_rng_seed(&g->rng, seed < 0 ? ctx->seed : (uint64_t)seed, (uint64_t)ctx->stream, (uint64_t)ctx->rank);
    int d = ctx->d, dv = ctx->dv;
    if (!joint) {
        g->sk = kv_malloc(sizeof(float) * (size_t)s * (size_t)d, err);
        g->sv = kv_malloc(sizeof(float) * (size_t)s * (size_t)dv, err);
        g->take = kv_malloc(sizeof(int) * (size_t)s, err);
        if (!g->sk || !g->sv || !g->take || kv_l2_init(&g->l2, (int)s, err)) goto fail;
    }
    if (g->use_index) {
        /* the projection only steers guesses, never results: a fixed seed */
        g->proj = kv_malloc(sizeof(float) * NP * (size_t)d, err);
        if (!g->proj) goto fail;
        kv_rng pr;
        kv_rng_seed(&pr, 0x70726f6aULL, 0, 0);
        for (int i = 0; i < NP * d; i++) g->proj[i] = (float)kv_rng_normal(&pr);
    }
    *out = g;
    return KV_OK;
fail:
    subgen_free(g);
    return err->code;
}

/* Everything allocated (budget_rule's units): capacities, not just what is used. */
static size_t subgen_bytes(const void *state)
{
    const subgen *g = state;
    size_t d = (size_t)g->ctx.d, dv = (size_t)g->ctx.dv;
    size_t b = (size_t)fixed_bytes(g->ctx.d, g->use_index);
    b += (size_t)g->ccap * (size_t)sg_slot_bytes(g->ctx.d, g->use_index); /* per-cluster arrays */
    b += (size_t)g->nres * (g->joint ? d + dv : d) * sizeof(float);   /* reservoir keys, joint's values (held = allocated) */
    b += (size_t)g->s * (size_t)sample_bytes(g->ctx.d, g->ctx.dv) - (size_t)g->s * (d + dv) * sizeof(float);
    b += (size_t)g->bcap * (d + dv) * sizeof(float); /* the exact buffer while it lives */
    return b;
}

static void subgen_cost(const void *state, kv_query_cost *c)
{
    *c = ((const subgen *)state)->cost;
}

static void subgen_extra(const void *state, kv_method_extra *x)
{
    const subgen *g = state;
    x->clusters = g->nc;
    int64_t kept = g->nres;
    if (g->buf_on) {
        kept += g->nbuf;
    } else if (g->l2.F > 0.0) { /* distinct tokens among the s samples */
        int64_t *ids = malloc(sizeof(int64_t) * (size_t)g->s);
        if (ids) {
            memcpy(ids, g->l2.item, sizeof(int64_t) * (size_t)g->s);
            qsort(ids, (size_t)g->s, sizeof(int64_t), kv_cmp_i64);
            for (int j = 0; j < g->s; j++) kept += j == 0 || ids[j] != ids[j - 1];
            free(ids);
        } else {
            kept += g->s;
        }
    }
    x->kept_tokens = kept;
}

/* Worst case: min(cap, shard) clusters' slots, min(shard, cap t) reservoir
 * keys, the exact buffer at min(s, shard) rows while the s samples are
 * held: reached exactly on distinct keys with delta = 0, s >= n. */
static int64_t subgen_max_bytes(const void *state)
{
    const subgen *g = state;
    int64_t lim = kv_shard_limit(&g->ctx), d = g->ctx.d, dv = g->ctx.dv, f = (int64_t)sizeof(float);
    int64_t ncl = g->cap < lim ? g->cap : lim, keys = g->cap > lim / g->t ? lim : g->cap * g->t;
    int64_t b = fixed_bytes(g->ctx.d, g->use_index) + sg_ccap_for(g, ncl) * sg_slot_bytes(g->ctx.d, g->use_index);
    b += keys * (g->joint ? d + dv : d) * f + (int64_t)g->s * (sample_bytes(g->ctx.d, g->ctx.dv) - (d + dv) * f);
    return b + sg_bcap_for(g, g->s < lim ? g->s : lim) * (d + dv) * f;
}

const kv_method_ops kv_method_subgen = {
    .name = "subgen",
    .kind = "sketch",
    .summary = "SubGen: online key clusters of radius delta with t-key reservoirs, plus s l2 samples of values "
               "(estimator=joint: reservoirs carry values instead)",
    .budget = "clusters x (t keys [+ values with estimator=joint] + centre) + s samples, over all ranks; budget=X picks s "
              "and clusters (estimator=joint: t and clusters)",
    .params = kv_subgen_params,
    .cfg_size = sizeof(kv_subgen_cfg),
    .check = subgen_check,
    .create = subgen_create,
    .ingest = sg_ingest,
    .partial = sg_partial,
    .bytes = subgen_bytes,
    .extra = subgen_extra,
    .cost = subgen_cost,
    .free = subgen_free,
    .save = sg_save,
    .load = sg_load,
    .max_bytes = subgen_max_bytes,
    .conform = { "delta=1,t=4,s=8;delta=0.5,t=8,s=16,seed=3,index=0", KV_PINV_NO },
};
