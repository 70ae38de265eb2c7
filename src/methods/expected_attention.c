/* expected_attention.c - expected-attention:tokens=<B> or budget=<X>
 * [,every=<E>][,queries=<W>][,sinks=<S>][,cov=yes|no][,vnorm=yes|no]:
 * Expected Attention (Devoto et al. 2025, arXiv 2510.00636; official code
 * NVIDIA/kvpress, ExpectedAttentionPress), ALGORITHMS.md section 4f.
 *
 * Rule.  The queries of the stream's last W query positions (every row of
 * each; positions <= S left out, as kvpress leaves the sink positions out of
 * its statistics) are modelled as one Gaussian N(mu, Sigma) (Sigma the
 * biased sample covariance, as kvpress).  A held token's expected softmax
 * weight under it is exp(a) / Z with
 *     a = scale mu.k + scale^2 k^T Sigma k / 2
 * (the Gaussian moment generating function; kvpress: scale = 1/sqrt(d)),
 * times its value norm ||v|| (kvpress's use_vnorm, epsilon 0).  Z, the sum
 * over the held tokens, is one factor common to every token of the stream,
 * so it never changes the order and is not computed: the eviction key is
 * a + log ||v|| (-inf for a zero value), which cannot overflow.  The first
 * S tokens are never evicted (kvpress's n_sink); before any query every key
 * is 0 and the oldest go, a window.  At each decision point x (every query
 * position, before its queries are answered, and every multiple of E in
 * between) the B best (key, index) over all ranks are kept (method.h:
 * decide hooks), so the answers do not depend on P: every rank has every
 * query (the driver reads and answers the broadcast queries on all ranks),
 * so the statistics, hence the keys, are the same everywhere without any
 * communication.  Near-ties are measured on the keys, i.e. on log scores.
 *
 * budget=X: B = floor((bytes(X) - W g q - G) / slot) - E, q a kept query
 * row, g the rows per position, G the Gaussian: the window of rows is kept on every rank and
 * counted once, on rank 0, like tova's rows, so B and the memory do not
 * depend on P.  tokens= and budget= exclude each other.  B >= n: exact.
 *
 * Memory: allocated slots x ((d + dv) floats + index + cached key) + the
 * window's rows (d floats each, the largest it held), its per-position
 * counts and its Gaussian (d + d^2 doubles; d without cov).  Keys are
 * cached: a decision recomputes them all only after the window changed (a
 * query was answered), else only the arrivals'. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/search.h"
#include "kernels/held.h"
#include "methods/method.h"
#include "methods/common/slots.h"

typedef struct {
    kv_method_ctx ctx;
    int64_t B, E, W, S;   /* global token budget; decision spacing; query window (positions); sinks */
    int cov, vnorm;       /* use the covariance term; weight by ||v|| */
    int64_t xlast;        /* the last decision point */
    int64_t gheld;        /* tokens held over all ranks since then */
    int64_t seen;         /* tokens ingested */
    int64_t ties;         /* near-tie decisions */
    kv_query_cost cost;   /* method.h: cost */
    kv_slots sl;          /* the held rows (no heap: keys change with every query) */
    double *key;          /* each slot's key (kcap allocated = sl.cap); valid below kdone */
    int64_t kcap;
    int kvalid;           /* 0: every key is stale (the window changed) */
    int64_t kdone;        /* with kvalid, slots below this have their key (the rest arrived since) */
    int64_t *lo_at;       /* the slots of the last decide_cands' keys, for its decide_apply (freed there) */
    double *g;            /* the window's Gaussian: mu (d), then with cov Sigma (d x d) */
    int gstate;           /* 0: stale; 1: g holds it; 2: no query yet (every key 0) */
    float *qr;            /* the window's rows, oldest first (nrows x d) */
    int64_t nrows, rcap;  /* rows held, allocated */
    int32_t *qn;          /* rows of each window position, oldest first (W allocated) */
    int64_t npos;         /* positions in the window */
} ea_state;

typedef struct {
    int64_t tokens, every, queries, sinks, cov, vnorm;
    kv_budget budget;
} ea_cfg;
KV_CFG_FITS(ea_cfg);

static const kv_param_def ea_params[] = {
    KV_PARAM_INT(ea_cfg, tokens, 1024, 1, INT32_MAX, "tokens held over all ranks together (sinks included)"),
    KV_PARAM_INT(ea_cfg, every, 16, 1, INT32_MAX,
                 "tokens between eviction decisions besides every query position (the peak holds up to this many more)"),
    KV_PARAM_INT(ea_cfg, queries, 128, 1, 1 << 20,
                 "query positions (all their rows) whose mean and covariance model the future queries"),
    KV_PARAM_INT(ea_cfg, sinks, 4, 0, INT32_MAX, "first tokens never evicted and left out of the statistics (kvpress n_sink)"),
    KV_PARAM_ENUM(ea_cfg, cov, "yes|no", 0, "yes: mean and covariance (kvpress default); no: the mean alone"),
    KV_PARAM_ENUM(ea_cfg, vnorm, "yes|no", 0, "yes: scores times the value norm (kvpress default)"),
    KV_PARAM_BUDGET(ea_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: tokens = what fits"),
    KV_PARAM_TABLE_END
};

/* a held token: its row and its cached key */
static int64_t slot_bytes(int d, int dv) { return kv_slots_row_bytes(d, dv, 0, 0) + (int64_t)sizeof(double); }

/* the Gaussian's cache: mu, and Sigma with cov */
static int64_t gauss_len(int d, int cov) { return d + (cov ? (int64_t)d * d : 0); }

static int64_t group_rows(const kv_method_ctx *ctx) { return ctx->q_group > 0 ? ctx->q_group : 1; }

/* the window at its nominal size (W positions of g rows, and the counts)
 * and the Gaussian's cache */
static int64_t window_bytes(const kv_method_ctx *ctx, int64_t W, int cov)
{
    return W * group_rows(ctx) * ctx->d * (int64_t)sizeof(float) + W * (int64_t)sizeof(int32_t) +
           gauss_len(ctx->d, cov) * (int64_t)sizeof(double);
}

static int ea_cfg_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    ea_cfg *c = cfg;
    if (c->budget.kind != KV_BUDGET_NONE && kv_spec_has(spec, "tokens"))
        return kv_params_error(ea_params, spec, err, "give tokens= or budget=, not both");
    if (c->budget.kind == KV_BUDGET_NONE && c->tokens <= c->sinks)
        return kv_params_error(ea_params, spec, err, "tokens=%lld must exceed sinks=%lld", (long long)c->tokens,
                               (long long)c->sinks);
    return KV_OK;
}

extern const kv_method_ops kv_method_expected_attention;

static int ea_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const ea_cfg *c = kv_method_cfg(&kv_method_expected_attention, spec, err);
    if (!c) return err->code;
    int64_t B = c->tokens;
    if (c->budget.kind != KV_BUDGET_NONE) {
        int64_t per = slot_bytes(ctx->d, ctx->dv), bytes = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv);
        int64_t rest = bytes - window_bytes(ctx, c->queries, c->cov == 0);
        B = rest > 0 ? rest / per - c->every : 0;
        if (B <= c->sinks)
            return kv_params_error(ea_params, spec, err,
                                   "budget of %lld bytes holds no more than the %lld sinks (a token takes %lld, the query "
                                   "window %lld, and %lld arriving between decisions are reserved: every=)",
                                   (long long)bytes, (long long)c->sinks, (long long)per,
                                   (long long)window_bytes(ctx, c->queries, c->cov == 0), (long long)c->every);
        if (B > INT32_MAX)
            return kv_params_error(ea_params, spec, err, "budget of %lld bytes is %lld tokens, over 2^31 - 1",
                                   (long long)bytes, (long long)B);
    }
    ea_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->qn = kv_calloc((size_t)c->queries, sizeof(int32_t), err);
    if (!s->qn) {
        free(s);
        return err->code;
    }
    s->ctx = *ctx;
    s->B = B;
    s->E = c->every;
    s->W = c->queries;
    s->S = c->sinks;
    s->cov = c->cov == 0;
    s->vnorm = c->vnorm == 0;
    s->g = kv_calloc((size_t)gauss_len(ctx->d, s->cov), sizeof(double), err);
    if (!s->g) {
        free(s->qn);
        free(s);
        return err->code;
    }
    kv_slots_init(&s->sl, ctx->d, ctx->dv, 0, 0);
    *out = s;
    return KV_OK;
}

/* The key array resized to rows (>= the slots in use); 1: out of memory. */
static int key_fit(ea_state *s, int64_t rows)
{
    if (rows == s->kcap) return 0;
    if (rows == 0) {
        free(s->key);
        s->key = NULL;
        s->kcap = 0;
        return 0;
    }
    double *k = realloc(s->key, sizeof(double) * (size_t)rows);
    if (!k) return rows > s->kcap; /* a failed shrink keeps the larger block */
    s->key = k;
    s->kcap = rows;
    return 0;
}

static int ea_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    ea_state *s = state;
    kv_slots *sl = &s->sl;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    if (!n) return KV_OK;
    if (kv_slots_grow(sl, sl->held + (int64_t)n, "expected-attention", err)) return err->code;
    if (key_fit(s, sl->held + (int64_t)n)) return kv_seterr(err, KV_EINTERNAL, "expected-attention: out of memory");
    for (size_t i = 0; i < n; i++) {
        kv_slots_set(sl, (int32_t)sl->held++, K + i * d, V + i * dv, first + (int64_t)i, 0);
    }
    s->seen += (int64_t)n;
    kv_slots_resize(sl, sl->held);
    return key_fit(s, sl->cap) ? kv_seterr(err, KV_EINTERNAL, "expected-attention: out of memory") : KV_OK;
}

/* The window's Gaussian: mu (d) and, with cov, Sigma (d x d, biased).
 * 0: no query yet (every key is then 0). */
static int gaussian(const ea_state *s, double *mu, double *sig)
{
    int64_t n = s->nrows, d = s->ctx.d;
    if (n == 0) return 0;
    for (int64_t i = 0; i < d; i++) mu[i] = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = 0; i < d; i++) mu[i] += s->qr[r * d + i];
    for (int64_t i = 0; i < d; i++) mu[i] /= (double)n;
    if (!s->cov) return 1;
    for (int64_t i = 0; i < d * d; i++) sig[i] = 0;
    for (int64_t r = 0; r < n; r++) {
        const float *q = s->qr + r * d;
        for (int64_t i = 0; i < d; i++) {
            double ci = q[i] - mu[i];
            for (int64_t j = i; j < d; j++) sig[i * d + j] += ci * (q[j] - mu[j]);
        }
    }
    for (int64_t i = 0; i < d; i++)
        for (int64_t j = i; j < d; j++) sig[j * d + i] = sig[i * d + j] /= (double)n;
    return 1;
}

/* The keys of EA_NK slots at once: log of each one's expected weight (up
 * to the common Z) times ||v||.  Each slot's sums are the one-slot sums in
 * the same order (mu.k over i; y = Sigma k as a sum of Sigma's rows, each
 * y[j] over i; k.y over j; |v|^2 over i); the slots only interleave, so
 * their dependent chains overlap and each row of Sigma is loaded once for
 * all of them, the keys' elements broadcast from a copy in doubles (kd,
 * element-major: no conversion in the inner loop).  EA_NK = 8 with 32
 * vector registers (16 accumulators), else 4.  y: 2 EA_NK d doubles of
 * scratch (y, then kd). */
#ifdef __AVX512F__
#define EA_NK 8
#else
#define EA_NK 4
#endif
typedef double ea_v8d __attribute__((vector_size(8 * sizeof(double))));

static void slot_keys(const ea_state *s, const int64_t *t, const double *mu, const double *sig, double *y, double *out)
{
    int64_t d = s->ctx.d, dv = s->ctx.dv;
    const float *k[EA_NK], *v[EA_NK];
    double sc = s->ctx.scale, a[EA_NK], quad[EA_NK], vv[EA_NK];
    for (int u = 0; u < EA_NK; u++) {
        k[u] = s->sl.K + t[u] * d;
        v[u] = s->sl.V + t[u] * dv;
        a[u] = quad[u] = vv[u] = 0;
    }
    for (int64_t i = 0; i < d; i++)
        for (int u = 0; u < EA_NK; u++) a[u] += mu[i] * k[u][i];
    for (int u = 0; u < EA_NK; u++) a[u] *= sc;
    if (s->cov) {
        double *kd = y + EA_NK * d;
        for (int64_t i = 0; i < d; i++)
            for (int u = 0; u < EA_NK; u++) kd[i * EA_NK + u] = k[u][i];
        int64_t j0 = 0;
        for (; j0 + 16 <= d; j0 += 16) { /* y[j0, j0 + 16) of every slot in registers */
            ea_v8d acc[EA_NK][2] = { { { 0 } } };
            for (int64_t i = 0; i < d; i++) {
                ea_v8d r0, r1;
                memcpy(&r0, sig + i * d + j0, sizeof r0);
                memcpy(&r1, sig + i * d + j0 + 8, sizeof r1);
                for (int u = 0; u < EA_NK; u++) {
                    double ki = kd[i * EA_NK + u];
                    acc[u][0] += r0 * ki;
                    acc[u][1] += r1 * ki;
                }
            }
            for (int u = 0; u < EA_NK; u++) memcpy(y + u * d + j0, acc[u], sizeof acc[u]);
        }
        for (int u = 0; u < EA_NK; u++) { /* the rest, as the one-slot loop */
            double *yu = y + u * d;
            for (int64_t j = j0; j < d; j++) yu[j] = 0;
            for (int64_t i = 0; i < d && j0 < d; i++) {
                double ki = k[u][i];
                const double *row = sig + i * d;
                for (int64_t j = j0; j < d; j++) yu[j] += row[j] * ki;
            }
        }
        for (int64_t j = 0; j < d; j++)
            for (int u = 0; u < EA_NK; u++) quad[u] += y[u * d + j] * k[u][j];
        for (int u = 0; u < EA_NK; u++) a[u] += 0.5 * sc * sc * quad[u];
    }
    if (s->vnorm)
        for (int64_t i = 0; i < dv; i++)
            for (int u = 0; u < EA_NK; u++) vv[u] += (double)v[u][i] * v[u][i];
    for (int u = 0; u < EA_NK; u++) {
        if (!s->vnorm) {
            out[u] = a[u];
            continue;
        }
        double r = vv[u] > 0 ? a[u] + 0.5 * log(vv[u]) : -INFINITY;
        out[u] = isnan(r) ? a[u] : r; /* an overflowed a (+inf) with a zero value */
    }
}

/* Bring every held slot's key up to date (sinks: +inf, never a
 * candidate): all of them after the window changed, else the arrivals
 * since the last decision.  The window changes only when a query is
 * answered, so between queries a decision scores only what arrived.  The
 * Gaussian's keys go EA_NK slots at a time (the last group padded with
 * its last slot). */
static int refresh_keys(ea_state *s)
{
    int64_t d = s->ctx.d, n = s->sl.held, t[EA_NK];
    int nt = 0;
    double *y = malloc(sizeof(double) * (size_t)(2 * EA_NK * d)), out[EA_NK];
    if (!y) return KV_EINTERNAL;
    if (s->gstate == 0) s->gstate = gaussian(s, s->g, s->g + d) ? 1 : 2;
    for (int64_t i = s->kvalid ? s->kdone : 0; i <= n; i++) {
        if (i < n) {
            if (s->sl.idx[i] < s->S || s->gstate != 1) {
                s->key[i] = s->sl.idx[i] < s->S ? INFINITY : 0.0;
                continue;
            }
            t[nt++] = i;
        }
        if (nt == EA_NK || (i == n && nt)) {
            for (int u = nt; u < EA_NK; u++) t[u] = t[nt - 1];
            slot_keys(s, t, s->g, s->g + d, y, out);
            for (int u = 0; u < nt; u++) s->key[t[u]] = out[u];
            nt = 0;
        }
    }
    s->kvalid = 1;
    s->kdone = n;
    free(y);
    return KV_OK;
}

static int64_t ea_every(const void *state) { return ((const ea_state *)state)->E; }

static int64_t ea_need(void *state, int64_t x, int at_query)
{
    ea_state *s = state;
    if (x <= s->xlast || (!at_query && x % s->E)) return 0;
    int64_t cand = s->gheld + (x - s->xlast);
    s->xlast = x;
    s->gheld = cand < s->B ? cand : s->B;
    return cand > s->B ? cand - s->B : 0;
}

static int ea_cands(void *const *st, int ns, int64_t x, const double *halo, int L, kv_evkey *keys)
{
    ea_state *s = st[0];
    (void)ns; (void)x; (void)halo;
    free(s->lo_at);
    s->lo_at = malloc(sizeof(int64_t) * (size_t)L);
    if (!s->lo_at || refresh_keys(s)) return KV_EINTERNAL;
    return kv_evict_lowest_cols(s->key, s->sl.idx, (size_t)s->sl.held, s->S, L, keys, s->lo_at);
}

/* Drop the non-sink slots whose key goes.  They are among the L lowest
 * that cands sent (need < L of all ranks' keys are at or below the cut),
 * whose slots it kept: those are dropped from the highest slot down, each
 * gap filled by the last slot, the order a scan of every slot from the
 * last down gives, so the held rows end in the same order. */
static int ea_apply(void *const *st, int ns, int64_t x, const kv_evkey *merged, int64_t need)
{
    ea_state *s = st[0];
    kv_evkey cut = merged[need - 1];
    int64_t ng = 0, *at = s->lo_at;
    (void)ns; (void)x;
    if (!at || need >= (int64_t)INT32_MAX) return KV_EINTERNAL; /* apply without its cands: a driver bug */
    for (int64_t j = 0; j < need && at[j] >= 0; j++) { /* ascending: the ones that go come first */
        kv_evkey k = { s->key[at[j]], (double)s->sl.idx[at[j]] };
        if (!kv_evkey_goes(k, cut)) break;
        at[ng++] = at[j];
    }
    qsort(at, (size_t)ng, sizeof *at, kv_cmp_i64);
    for (int64_t j = ng - 1; j >= 0; j--) { /* the highest slot first */
        s->key[at[j]] = s->key[s->sl.held - 1]; /* the last slot moves into the gap */
        kv_slots_drop(&s->sl, (int32_t)at[j]);
    }
    s->lo_at = NULL;
    free(at);
    s->kdone = s->sl.held;
    s->ties += kv_evict_near_tie(cut, merged[need]);
    kv_slots_resize(&s->sl, s->sl.held);
    key_fit(s, s->sl.cap); /* a shrink: cannot fail */
    return KV_OK;
}

/* Add one position's rows to the window (dropping the oldest position when
 * it holds W); rows of positions <= S stay out, as kvpress's sinks. */
static int window_push(ea_state *s, const float *Q, int nq, int64_t p)
{
    int64_t d = s->ctx.d;
    if (nq <= 0 || p <= s->S) return KV_OK;
    if (s->npos == s->W) {
        int64_t drop = s->qn[0];
        memmove(s->qr, s->qr + drop * d, sizeof(float) * (size_t)((s->nrows - drop) * d));
        memmove(s->qn, s->qn + 1, sizeof(int32_t) * (size_t)(s->npos - 1));
        s->nrows -= drop;
        s->npos--;
    }
    if (s->nrows + nq > s->rcap) {
        float *q = realloc(s->qr, sizeof(float) * (size_t)((s->nrows + nq) * d));
        if (!q) return KV_EINTERNAL;
        s->qr = q;
        s->rcap = s->nrows + nq;
    }
    memcpy(s->qr + s->nrows * d, Q, sizeof(float) * (size_t)(nq * d));
    s->nrows += nq;
    s->qn[s->npos++] = nq;
    s->gstate = s->kvalid = 0;
    return KV_OK;
}

static int ea_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    ea_state *s = state;
    kv_slots_cost(&s->sl, nq, &s->cost);
    int rc = kv_attn_held(Q, nq, s->sl.K, s->sl.V, (size_t)s->sl.held, s->ctx.d, s->ctx.dv, s->ctx.scale, st);
    return rc ? rc : window_push(s, Q, nq, p);
}

static void ea_cost(const void *state, kv_query_cost *c) { *c = ((const ea_state *)state)->cost; }

/* the window and its Gaussian, counted once, on rank 0 (every rank keeps
 * the same copy) */
static int64_t window_held(const ea_state *s)
{
    return s->ctx.rank == 0 ? s->rcap * s->ctx.d * (int64_t)sizeof(float) + s->W * (int64_t)sizeof(int32_t) +
                                  gauss_len(s->ctx.d, s->cov) * (int64_t)sizeof(double)
                            : 0;
}

static size_t ea_bytes(const void *state)
{
    const ea_state *s = state;
    return kv_slots_bytes(&s->sl) + (size_t)s->kcap * sizeof(double) + (size_t)window_held(s);
}

static void ea_extra(const void *state, kv_method_extra *x)
{
    const ea_state *s = state;
    x->clusters = -1;
    x->kept_tokens = s->sl.held;
    x->near_ties = s->ties;
}

static void ea_free(void *state)
{
    ea_state *s = state;
    if (!s) return;
    kv_slots_free(&s->sl);
    free(s->qr);
    free(s->qn);
    free(s->key);
    free(s->lo_at);
    free(s->g);
    free(s);
}

/* Counters, the window (allocated rows, counts, rows), then the slots;
 * the keys and the Gaussian are computed anew after a load (from the same
 * numbers, in the same order: the same bits). */
static void ea_save(const void *state, kv_buf *out)
{
    const ea_state *s = state;
    kv_buf_put_i64(out, s->xlast);
    kv_buf_put_i64(out, s->gheld);
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_i64(out, s->ties);
    kv_buf_put_i64(out, s->rcap);
    kv_buf_put_arr(out, s->qn, (size_t)s->npos * sizeof(int32_t));
    kv_buf_put_arr(out, s->qr, (size_t)(s->nrows * s->ctx.d) * sizeof(float));
    kv_slots_save(&s->sl, out);
}

/* What ingest, the decisions and the window maintain beyond
 * kv_slots_load's rules. */
static int ea_valid(const ea_state *s, int64_t nq)
{
    int64_t n = s->sl.held, lim = kv_shard_limit(&s->ctx), rows = 0;
    if (s->xlast < 0 || s->xlast > s->ctx.n_total || s->gheld < 0 || s->gheld > s->B || n > s->gheld ||
        s->seen < n || s->seen > lim || s->ties < 0 || s->ties > s->xlast || s->npos > s->W)
        return 0;
    for (int64_t i = 0; i < s->npos; i++) {
        if (s->qn[i] < 1) return 0;
        rows += s->qn[i];
    }
    return rows == nq && s->rcap >= nq && s->rcap <= (int64_t)INT32_MAX && kv_all_finite(s->qr, (size_t)(nq * s->ctx.d));
}

static int ea_load(void *state, kv_rd *in, kv_err *err)
{
    ea_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), most = s->B + s->E < lim ? s->B + s->E : lim;
    size_t npos = 0, nr = 0, d = (size_t)s->ctx.d;
    void *qn = NULL, *qr = NULL;
    ea_state t = *s;
    if (kv_rd_i64(in, &t.xlast, err) || kv_rd_i64(in, &t.gheld, err) || kv_rd_i64(in, &t.seen, err) ||
        kv_rd_i64(in, &t.ties, err) || kv_rd_i64(in, &t.rcap, err) ||
        kv_rd_arr(in, &qn, sizeof(int32_t), (size_t)s->W, &npos, err) ||
        kv_rd_arr(in, &qr, sizeof(float), (size_t)s->W * 4096 * d, &nr, err) ||
        kv_slots_load(&t.sl, &s->sl, in, most, s->ctx.n_total, "expected-attention", err)) {
        free(qn);
        free(qr);
        return err->code;
    }
    t.npos = (int64_t)npos;
    t.qn = qn;
    t.qr = qr;
    t.nrows = d ? (int64_t)(nr / d) : 0;
    float *grown = NULL;
    int ok = d && nr % d == 0 && t.rcap <= s->W * 4096 && ea_valid(&t, t.nrows);
    if (ok && t.rcap > t.nrows && !(grown = realloc(qr, sizeof(float) * (size_t)t.rcap * d))) ok = 0;
    if (ok && key_fit(&t, t.sl.cap)) ok = 0; /* t.key is s's array: resized in place */
    s->key = t.key;
    s->kcap = t.kcap;
    if (!ok) {
        free(qn);
        free(grown ? (void *)grown : qr);
        kv_slots_free(&t.sl);
        return kv_seterr(err, KV_EINPUT, "checkpoint: expected-attention state is inconsistent");
    }
    if (npos) memcpy(s->qn, qn, npos * sizeof(int32_t));
    free(qn);
    t.qn = s->qn;
    if (grown) t.qr = grown; /* the allocation the saved run held, so bytes() is the same */
    kv_slots_free(&s->sl);
    free(s->qr);
    *s = t;
    s->gstate = s->kvalid = 0;
    return KV_OK;
}

static int64_t ea_max_bytes(const void *state)
{
    const ea_state *s = state;
    int64_t lim = kv_shard_limit(&s->ctx), held = s->B + s->E < lim ? s->B + s->E : lim;
    /* the window at g rows per position (more only where a trace puts
     * several queries of one head at one position) */
    return held * slot_bytes(s->ctx.d, s->ctx.dv) + (s->ctx.rank == 0 ? window_bytes(&s->ctx, s->W, s->cov) : 0);
}

const kv_method_ops kv_method_expected_attention = {
    .name = "expected-attention",
    .kind = "eviction",
    .summary = "Expected Attention (kvpress): drop the tokens with the lowest expected weight x ||v|| under a Gaussian of "
               "the recent queries",
    .budget = "tokens= (or budget= bytes) over all ranks together: the S sinks and the B - S best scored tokens",
    .params = ea_params,
    .cfg_size = sizeof(ea_cfg),
    .check = ea_cfg_check,
    .create = ea_create,
    .ingest = ea_ingest,
    .partial = ea_partial,
    .decide_every = ea_every,
    .decide_need = ea_need,
    .decide_cands = ea_cands,
    .decide_apply = ea_apply,
    .bytes = ea_bytes,
    .extra = ea_extra,
    .free = ea_free,
    .save = ea_save,
    .load = ea_load,
    .max_bytes = ea_max_bytes,
    .cost = ea_cost,
    .conform = { "tokens=120;tokens=1000000;tokens=7,every=3,queries=2;tokens=40,cov=no,vnorm=no,sinks=0", KV_PINV_ROUNDING },
};
