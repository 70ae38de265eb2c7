/* balancekv.c - balancekv:tokens=<R>|budget=<X>[,seed=<n>]: BalanceKV
 * (Han, Kochetkova, Zandieh et al. 2025, "BalanceKV: KV Cache Compression
 * through Discrepancy Theory"), ALGORITHMS.md section 4d.
 *
 * Merge and reduce.  Each rank streams its tokens into a buffer of b rows
 * (weight 1).  A full buffer is halved: a self-balancing walk (Alweiss, Liu,
 * Sawhney 2021) colours its rows +-1 so that the signed sum of the rows'
 * feature vectors stays small, and the smaller colour class is kept with
 * twice the weight.  The half goes to level 1; a level that already holds a
 * half merges with it (<= b rows, in the buffer) and the result is halved
 * again into the next level, a binary counter: level l holds at most b/2
 * rows of weight 2^l standing for b 2^(l-1) tokens.  Queries are answered
 * with every held row and its weight (a weighted softmax, section 1).
 *
 * The walk.  Row i is x_i = phi(k_i) (+) phi(k_i) (x) v_i, phi the feature
 * map of the exponential kernel, <phi(k), phi(k')> = exp(scale <k, k'>), so
 * that <x_i, x_j> = exp(scale <k_i, k_j>) (1 + <v_i, v_j>) (computed as
 * such, never the features), normalised by exp(scale max|k|^2)(1 + max|v|^2)
 * so every |x_i| <= 1.  With w = sum_{j<i} eps_j x_j, eps_i = +1 with
 * probability (1 - <w, x_i> / c') / 2 (clamped to [0, 1]), c' = c times the
 * block's mean |x_i|^2 (parameter c, default 0.01: a greedy walk; c large
 * gives fair coins, i.e. merge-and-reduce by random halving, the baseline
 * the walk is tested against).
 * For any query q, the attention numerator and denominator over the kept
 * class, doubled, differ from the block's by the signed sum's inner product
 * with (phi(q), phi(q) (x) e_j): both colour classes have that same error,
 * so keeping the smaller one (<= b/2 rows, the memory bound) costs nothing.
 *
 * Guarantee targeted (our reading of the paper, not proved here): the
 * walk keeps the signed sum's discrepancy polylogarithmic in the block size
 * (Alweiss-Liu-Sawhney), so each halving errs by O(polylog) rows' worth of
 * attention mass instead of the O(sqrt(b)) of random halving, and the
 * weighted numerator and denominator have relative error of order
 * discrepancy x levels / b, falling like 1/b rather than 1/sqrt(b), with
 * constants growing like e^{O(scale r^2)} for keys of norm <= r.  Tested
 * are its consequences: the error falls as the budget grows, and the walk
 * beats fair coins in the same structure.  At equal memory uniform
 * sampling still wins on clustered traces (docs/ALGORITHMS.md section 4d):
 * the log(n/b) levels cost memory, and the top levels (weight 2^L, b/2
 * rows for half the stream) dominate the error.
 *
 * Departures: the threshold c' = c mean|x|^2 instead of the theorem's
 * 30 ln(n/delta) for |x| <= 1 (after normalising, most |x_i| are far below
 * 1 and so large a threshold makes the signs fair coins: on the 2 x 3,000
 * token global-methods test trace at 10%, an absolute threshold ln b gave
 * mean error 0.234, fair coins (c = 1e12) 0.238, c = 0.01 0.165); the
 * smaller class kept instead of a fixed one; the coins are hashes of
 * (seed, stream, rank, halving, row) so runs are reproducible.
 *
 * Budget: rows over all ranks together, a rank getting floor(R shard / n);
 * a rank picks the largest even b with b + (b/2) L(b) <= its rows, L(b) the
 * levels its shard needs (bit length of floor(shard / b)); a shard that
 * fits whole never halves (b > shard: exact attention).  budget=X: R =
 * bytes(X) / ((d + dv) 4 + 1), the 1 for a buffer row's sign byte.  At P > 1 each
 * rank summarises its own shard: the answer is the same kind of estimate,
 * not the same numbers as at P = 1.
 *
 * Memory: the buffer (grown as tokens come, up to b rows) and each level's
 * block of b/2 rows (allocated when the level is first used), (d + dv)
 * floats a row, plus b sign bytes; a halving also takes a copy of the
 * buffer's keys and values in 16-row blocks and the signs as floats
 * (b (d + dv + 1) floats, balancekv_walk.c) for its duration.
 *
 * Ingest cost: a halving of b rows takes b^2/2 kernel products (O(d + dv)
 * and an exp each), about two halvings per b tokens, so O(b (d + dv)) per
 * token: at the bench's budget=10% of 2^16 tokens at d = 64 (b = 1,638)
 * about 4 10^5 flops a token, more than one core's FMA peak allows at 1 M
 * tokens/s (ALGORITHMS.md 4d). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/held.h"
#include "kernels/partial.h"
#include "methods/balancekv_walk.h"
#include "methods/method.h"

#define MAXLEV 62
#define BKV_SALT 0xba1a9ce5ULL

typedef double v8d __attribute__((vector_size(8 * sizeof(double))));

typedef struct {
    int64_t tokens, seed;
    double c;
    kv_budget budget;
} balancekv_cfg;
KV_CFG_FITS(balancekv_cfg);

typedef struct {
    kv_method_ctx ctx;
    uint64_t seed;
    double c;                 /* walk threshold, in units of the block's mean |x_i|^2 */
    int64_t b, nlev;          /* block rows; levels 1..nlev available */
    int64_t seen, halvings;
    int64_t n0, cap0;         /* buffer rows in use, allocated */
    float *K0, *V0;
    int8_t *sign;             /* b walk signs (allocated with the buffer's first block) */
    int64_t cnt[MAXLEV + 1];  /* level l: rows held (0 = empty) */
    int alloc[MAXLEV + 1];    /* level l's block of b/2 rows is allocated */
    float *Kl[MAXLEV + 1], *Vl[MAXLEV + 1];
    kv_query_cost cost;       /* method.h: cost */
} balancekv_state;

static const kv_param_def balancekv_params[] = {
    KV_PARAM_INT(balancekv_cfg, tokens, 1024, 2, INT32_MAX, "rows held over all ranks together (buffer + levels)"),
    KV_PARAM_INT_DERIVED(balancekv_cfg, seed, -1, "--seed", 0, INT64_MAX, "walk seed (stream and rank mixed in)"),
    KV_PARAM_DOUBLE(balancekv_cfg, c, 0.01, 1e-9, 1e12,
                    "walk threshold over the block's mean squared feature norm (large: fair coins)"),
    KV_PARAM_BUDGET(balancekv_cfg, budget, "memory budget (10%, 8MiB, 4096tok) instead of tokens: rows = what fits"),
    KV_PARAM_TABLE_END
};

static int balancekv_check(void *cfg, const kv_spec *spec, kv_err *err)
{
    balancekv_cfg *c = cfg;
    if (c->budget.kind != KV_BUDGET_NONE && kv_spec_has(spec, "tokens"))
        return kv_params_error(balancekv_params, spec, err, "give tokens= or budget=, not both");
    return KV_OK;
}

static int64_t bitlen(int64_t x)
{
    int64_t L = 0;
    while (x > 0) { L++; x >>= 1; }
    return L;
}

/* rows a rank with a shard of N tokens holds at block b */
static int64_t rows_at(int64_t b, int64_t N) { return b + (b / 2) * bitlen(N / b); }

extern const kv_method_ops kv_method_balancekv;

static int balancekv_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const balancekv_cfg *c = kv_method_cfg(&kv_method_balancekv, spec, err);
    if (!c) return err->code;
    int64_t row = (int64_t)(ctx->d + ctx->dv) * (int64_t)sizeof(float), R = c->tokens;
    if (c->budget.kind != KV_BUDGET_NONE) R = kv_budget_bytes(&c->budget, ctx->n_total, ctx->d, ctx->dv) / (row + 1);
    int64_t N = kv_shard_limit(ctx), Rr;
    if (ctx->shard_tokens > 0 && ctx->n_total > 0) Rr = (int64_t)((__int128)R * ctx->shard_tokens / ctx->n_total);
    else Rr = R / (ctx->nranks > 0 ? ctx->nranks : 1);
    int64_t b = 0;
    if (N <= Rr) b = N + 1 + (N % 2 == 0); /* never fills: exact */
    else
        for (int64_t t = 2; t <= Rr; t += 2)
            if (rows_at(t, N) <= Rr) b = t;
    if (b < 2)
        return kv_params_error(balancekv_params, spec, err,
                               "%lld rows over %d ranks leave %lld on a rank: too few for one block (b + b/2 levels)",
                               (long long)R, ctx->nranks, (long long)Rr);
    balancekv_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->seed = c->seed < 0 ? ctx->seed : (uint64_t)c->seed;
    s->c = c->c;
    s->b = b;
    s->nlev = bitlen(N / b);
    if (s->nlev > MAXLEV) s->nlev = MAXLEV;
    *out = s;
    return KV_OK;
}

static void balancekv_free(void *state)
{
    balancekv_state *s = state;
    if (!s) return;
    free(s->K0); free(s->V0); free(s->sign);
    for (int l = 0; l <= MAXLEV; l++) { free(s->Kl[l]); free(s->Vl[l]); }
    free(s);
}

/* Halve the buffer's n0 rows in place: walk signs (balancekv_walk.c), keep
 * the smaller class (ties: the -1 class) at the front.  KV_EINTERNAL
 * (nothing changed) without scratch memory. */
static int halve(balancekv_state *s)
{
    int64_t n = s->n0;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    kv_bkv_block blk = { s->K0, s->V0, n, s->ctx.d, s->ctx.dv, s->ctx.scale, s->c,
                         kv_hash4(s->seed, (uint64_t)s->ctx.stream, (uint64_t)s->ctx.rank, BKV_SALT),
                         (uint64_t)s->halvings };
    int64_t plus = kv_bkv_walk(&blk, s->sign);
    if (plus < 0) return KV_EINTERNAL;
    int8_t keep = plus < n - plus ? 1 : -1;
    int64_t w = 0;
    for (int64_t i = 0; i < n; i++) {
        if (s->sign[i] != keep) continue;
        if (w != i) {
            memmove(s->K0 + w * d, s->K0 + i * d, sizeof(float) * d);
            memmove(s->V0 + w * dv, s->V0 + i * dv, sizeof(float) * dv);
        }
        w++;
    }
    s->n0 = w;
    s->halvings++;
    return KV_OK;
}

/* The full buffer: halve, then carry up the levels (binary counter). */
static int reduce(balancekv_state *s, kv_err *err)
{
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv, half = (size_t)(s->b / 2);
    if (halve(s)) return kv_seterr(err, KV_EINTERNAL, "balancekv: out of memory halving %lld rows", (long long)s->n0);
    for (int64_t l = 1;; l++) {
        if (l > s->nlev)
            return kv_seterr(err, KV_EINTERNAL, "balancekv: more tokens than the shard's %lld",
                             (long long)kv_shard_limit(&s->ctx));
        if (!s->cnt[l]) {
            if (!s->alloc[l]) {
                s->Kl[l] = malloc(sizeof(float) * d * half);
                s->Vl[l] = malloc(sizeof(float) * dv * half);
                if (!s->Kl[l] || !s->Vl[l]) return kv_seterr(err, KV_EINTERNAL, "balancekv: out of memory");
                s->alloc[l] = 1;
            }
            if (s->n0) {
                memcpy(s->Kl[l], s->K0, sizeof(float) * d * (size_t)s->n0);
                memcpy(s->Vl[l], s->V0, sizeof(float) * dv * (size_t)s->n0);
            }
            s->cnt[l] = s->n0;
            s->n0 = 0;
            return KV_OK;
        }
        /* merge: the level's rows after the buffer's (<= b rows), halve again */
        memcpy(s->K0 + (size_t)s->n0 * d, s->Kl[l], sizeof(float) * d * (size_t)s->cnt[l]);
        memcpy(s->V0 + (size_t)s->n0 * dv, s->Vl[l], sizeof(float) * dv * (size_t)s->cnt[l]);
        s->n0 += s->cnt[l];
        s->cnt[l] = 0;
        if (halve(s))
            return kv_seterr(err, KV_EINTERNAL, "balancekv: out of memory halving %lld rows", (long long)s->n0);
    }
}

static int grow0(balancekv_state *s, int64_t rows, kv_err *err)
{
    if (rows <= s->cap0) return KV_OK;
    if (rows > s->b) rows = s->b;
    float *K = realloc(s->K0, sizeof(float) * (size_t)rows * (size_t)s->ctx.d);
    if (K) s->K0 = K;
    float *V = K ? realloc(s->V0, sizeof(float) * (size_t)rows * (size_t)s->ctx.dv) : NULL;
    if (V) s->V0 = V;
    int8_t *g = V ? realloc(s->sign, (size_t)rows) : NULL;
    if (g) s->sign = g;
    if (!g) return kv_seterr(err, KV_EINTERNAL, "balancekv: out of memory for %lld buffer rows", (long long)rows);
    s->cap0 = rows;
    return KV_OK;
}

static int balancekv_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    balancekv_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    (void)first;
    if (!n) return KV_OK;
    /* the merges need the whole buffer once the first halving comes */
    if (grow0(s, s->n0 + (int64_t)n >= s->b ? s->b : s->n0 + (int64_t)n, err)) return err->code;
    for (size_t i = 0; i < n; i++) {
        memcpy(s->K0 + (size_t)s->n0 * d, K + i * d, sizeof(float) * d);
        memcpy(s->V0 + (size_t)s->n0 * dv, V + i * dv, sizeof(float) * dv);
        if (++s->n0 == s->b && reduce(s, err)) return err->code;
    }
    s->seen += (int64_t)n;
    return KV_OK;
}

#if defined(__AVX512F__)
#define FW 8 /* v8d sums per column block: 8 of 32 registers */
#else
#define FW 4
#endif

/* u[c .. c + 8W) over the rows in order: u *= f[i] where the max rose at
 * row i (f[i] != 1; multiplying by 1 changes nothing), then u += we[i] v_i:
 * per column the multiplies and multiply-adds of kv_partial_add_one, in its
 * order, with the sums in registers.  W a constant at each call. */
static inline __attribute__((always_inline)) void fold_cols(const balancekv_state *s, const double *we,
                                                            const double *f, int c, int W, double *u)
{
    size_t dv = (size_t)s->ctx.dv;
    v8d a[FW];
    for (int i = 0; i < W; i++) a[i] = (v8d){ 0 };
    int64_t r = 0;
    for (int64_t l = 0; l <= s->nlev; l++) {
        int64_t m = l ? s->cnt[l] : s->n0;
        const float *Vb = l ? s->Vl[l] : s->V0;
        for (int64_t i = 0; i < m; i++, r++) {
            if (f[r] != 1.0) {
                v8d g = { f[r], f[r], f[r], f[r], f[r], f[r], f[r], f[r] };
                for (int k = 0; k < W; k++) a[k] *= g;
            }
            for (int k = 0; k < W; k++) {
                v8d y = kv_ld8d(Vb + (size_t)i * dv + (size_t)c + 8 * (size_t)k);
                kv_madd_d8(&a[k], we[r], &y);
            }
        }
    }
    memcpy(u + c, a, sizeof(v8d) * (size_t)W);
}

/* One query over every held row, bitwise kv_partial_add_one row by row
 * (levels 0 .. nlev, rows in order): the logits 8 keys at a time
 * (kv_held_logits: the same bits as kv_dot_fixed * scale), then the running
 * max, exps, l and l2 in one scalar pass that notes each row's weight w e
 * and rescale factor, then the value sums by column blocks.  sc: 3 rows
 * doubles of scratch. */
static void answer(const balancekv_state *s, const float *q, int64_t rows, double *sc, double *x)
{
    int d = s->ctx.d, dv = s->ctx.dv;
    double *lg = sc, *we = sc + rows, *f = sc + 2 * rows;
    int64_t r = 0;
    for (int64_t l = 0; l <= s->nlev; l++) {
        int64_t m = l ? s->cnt[l] : s->n0;
        if (m) kv_held_logits(q, 1, l ? s->Kl[l] : s->K0, (size_t)m, d, s->ctx.scale, lg + r, (size_t)m);
        r += m;
    }
    double M = -INFINITY, L = 0, L2 = 0;
    r = 0;
    for (int64_t l = 0; l <= s->nlev; l++) {
        int64_t m = l ? s->cnt[l] : s->n0;
        double w = ldexp(1.0, (int)l);
        for (int64_t i = 0; i < m; i++, r++) {
            double a = lg[r];
            f[r] = 1.0;
            if (a > M) {
                if (M == -INFINITY) {
                    M = a;
                } else { /* partial.c's rescale */
                    double g = exp(M - a);
                    L *= g;
                    L2 *= g * g;
                    f[r] = g;
                    M = a;
                }
            }
            double e = exp(a - M); /* kv_partial_add_one's sums, fused as it fuses them in memory */
            L = kv_madd_d(w, e, L);
            L2 = kv_madd_d(w * e, e, L2);
            we[r] = w * e;
        }
    }
    x[KV_PS_M] = M;
    x[KV_PS_L] = L;
    x[KV_PS_L2] = L2;
    double *u = x + KV_PS_U;
    int c = 0;
    for (; c + 8 * FW <= dv; c += 8 * FW) fold_cols(s, we, f, c, FW, u);
    for (; c + 8 <= dv; c += 8) fold_cols(s, we, f, c, 1, u);
    for (; c < dv; c++) { /* the last columns one at a time, the same operations */
        double y = 0;
        r = 0;
        for (int64_t l = 0; l <= s->nlev; l++) {
            int64_t m = l ? s->cnt[l] : s->n0;
            const float *Vb = l ? s->Vl[l] : s->V0;
            for (int64_t i = 0; i < m; i++, r++) {
                if (f[r] != 1.0) y *= f[r];
                y = kv_madd_d(we[r], Vb[(size_t)i * (size_t)dv + (size_t)c], y);
            }
        }
        u[c] = y;
    }
}

static int balancekv_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    balancekv_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv, sl = KV_PSTATE_LEN(s->ctx.dv);
    (void)p; /* every held row is < p */
    int64_t rows = s->n0;
    for (int64_t l = 1; l <= s->nlev; l++) rows += s->cnt[l];
    if (nq > 0) kv_cost_add(&s->cost, nq, 4.0 * (double)rows * (double)(d + dv), (double)rows, 2.0 * (double)rows * (double)(d + dv));
    double *sc = rows ? malloc(sizeof(double) * 3 * (size_t)rows) : NULL;
    if (rows && !sc) return KV_EINTERNAL;
    for (int q = 0; q < nq; q++) {
        double *x = st + q * sl;
        kv_partial_clear(x, s->ctx.dv);
        if (rows) answer(s, Q + (size_t)q * d, rows, sc, x);
        if (s->halvings) x[KV_PS_L2] = 0; /* an estimate: no |softmax|_2 */
    }
    free(sc);
    return KV_OK;
}

static size_t balancekv_bytes(const void *state)
{
    const balancekv_state *s = state;
    size_t row = (size_t)(s->ctx.d + s->ctx.dv) * sizeof(float), r = (size_t)s->cap0 * (row + 1);
    for (int64_t l = 1; l <= s->nlev; l++) r += s->alloc[l] ? (size_t)(s->b / 2) * row : 0;
    return r;
}

static void balancekv_cost(const void *state, kv_query_cost *c)
{
    *c = ((const balancekv_state *)state)->cost;
}

static void balancekv_extra(const void *state, kv_method_extra *x)
{
    const balancekv_state *s = state;
    int64_t k = s->n0;
    for (int64_t l = 1; l <= s->nlev; l++) k += s->cnt[l];
    x->clusters = -1;
    x->kept_tokens = k;
}

/* Counters, the buffer (capacity and rows), then per level its allocation
 * flag and rows. */
static void balancekv_save(const void *state, kv_buf *out)
{
    const balancekv_state *s = state;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv;
    kv_buf_put_i64(out, s->seen);
    kv_buf_put_i64(out, s->halvings);
    kv_buf_put_i64(out, s->cap0);
    kv_buf_put_arr(out, s->K0, (size_t)s->n0 * d * sizeof(float));
    kv_buf_put_arr(out, s->V0, (size_t)s->n0 * dv * sizeof(float));
    for (int64_t l = 1; l <= s->nlev; l++) {
        kv_buf_put_i64(out, s->alloc[l]);
        kv_buf_put_arr(out, s->Kl[l], (size_t)s->cnt[l] * d * sizeof(float));
        kv_buf_put_arr(out, s->Vl[l], (size_t)s->cnt[l] * dv * sizeof(float));
    }
}

static int balancekv_load(void *state, kv_rd *in, kv_err *err)
{
    balancekv_state *s = state, *t = NULL;
    size_t d = (size_t)s->ctx.d, dv = (size_t)s->ctx.dv, nk, nv, half = (size_t)(s->b / 2);
    int64_t lim = kv_shard_limit(&s->ctx), al;
    void *K = NULL, *V = NULL;
    t = kv_calloc(1, sizeof *t, err);
    if (!t) return err->code;
    t->ctx = s->ctx; t->seed = s->seed; t->c = s->c; t->b = s->b; t->nlev = s->nlev;
    if (kv_rd_i64(in, &t->seen, err) || kv_rd_i64(in, &t->halvings, err) || kv_rd_i64(in, &t->cap0, err)) goto fail;
    if (t->seen < 0 || t->seen > lim || t->halvings < 0 || t->halvings > t->seen || t->cap0 < 0 || t->cap0 > t->b ||
        t->cap0 > t->seen)
        goto bad;
    if (kv_rd_arr(in, &K, sizeof(float) * d, (size_t)t->b - 1, &nk, err) ||
        kv_rd_arr(in, &V, sizeof(float) * dv, (size_t)t->b - 1, &nv, err))
        goto fail;
    if (nk != nv || (int64_t)nk > t->cap0 || (nk && (!kv_all_finite(K, nk * d) || !kv_all_finite(V, nk * dv)))) goto bad;
    t->n0 = (int64_t)nk;
    if (t->cap0) {
        t->K0 = malloc(sizeof(float) * d * (size_t)t->cap0);
        t->V0 = malloc(sizeof(float) * dv * (size_t)t->cap0);
        t->sign = malloc((size_t)t->cap0);
        if (!t->K0 || !t->V0 || !t->sign) {
            kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring balancekv");
            goto fail;
        }
        if (nk) {
            memcpy(t->K0, K, sizeof(float) * d * nk);
            memcpy(t->V0, V, sizeof(float) * dv * nk);
        }
    }
    free(K); free(V);
    K = V = NULL;
    for (int64_t l = 1; l <= t->nlev; l++) {
        if (kv_rd_i64(in, &al, err)) goto fail;
        if (al != 0 && al != 1) goto bad;
        if (kv_rd_arr(in, &K, sizeof(float) * d, half, &nk, err) || kv_rd_arr(in, &V, sizeof(float) * dv, half, &nv, err))
            goto fail;
        if (nk != nv || (nk && !al) || (nk && (!kv_all_finite(K, nk * d) || !kv_all_finite(V, nk * dv)))) goto bad;
        t->alloc[l] = (int)al;
        t->cnt[l] = (int64_t)nk;
        if (al) {
            t->Kl[l] = malloc(sizeof(float) * d * half);
            t->Vl[l] = malloc(sizeof(float) * dv * half);
            if (!t->Kl[l] || !t->Vl[l]) {
                kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory restoring balancekv");
                goto fail;
            }
            if (nk) {
                memcpy(t->Kl[l], K, sizeof(float) * d * nk);
                memcpy(t->Vl[l], V, sizeof(float) * dv * nk);
            }
        }
        free(K); free(V);
        K = V = NULL;
    }
    /* level l is allocated once 2^(l-1) halvings of the buffer happened */
    for (int64_t l = 1; l <= t->nlev; l++)
        if (t->alloc[l] && t->seen < (t->b << (l - 1))) goto bad;
    /* swap in: free s's arrays, move t's */
    free(s->K0); free(s->V0); free(s->sign);
    for (int l = 0; l <= MAXLEV; l++) { free(s->Kl[l]); free(s->Vl[l]); }
    *s = *t;
    free(t);
    return KV_OK;
bad:
    kv_seterr(err, KV_EINPUT, "checkpoint: balancekv state is inconsistent");
fail:
    free(K); free(V);
    balancekv_free(t);
    return err->code;
}

static int64_t balancekv_max_bytes(const void *state)
{
    const balancekv_state *s = state;
    int64_t row = (int64_t)(s->ctx.d + s->ctx.dv) * (int64_t)sizeof(float), lim = kv_shard_limit(&s->ctx);
    int64_t b0 = s->b < lim ? s->b : lim;
    return b0 * (row + 1) + s->nlev * (s->b / 2) * row;
}

const kv_method_ops kv_method_balancekv = {
    .name = "balancekv",
    .kind = "sketch",
    .summary = "BalanceKV: merge-and-reduce halving by a self-balancing walk, a weighted token subset",
    .budget = "tokens= rows (or budget= bytes) over all ranks together, split by shard: buffer b + b/2 per level",
    .params = balancekv_params,
    .cfg_size = sizeof(balancekv_cfg),
    .check = balancekv_check,
    .create = balancekv_create,
    .ingest = balancekv_ingest,
    .partial = balancekv_partial,
    .bytes = balancekv_bytes,
    .extra = balancekv_extra,
    .cost = balancekv_cost,
    .free = balancekv_free,
    .save = balancekv_save,
    .load = balancekv_load,
    .max_bytes = balancekv_max_bytes,
    .conform = { "tokens=200;tokens=100,c=1e12,seed=3;tokens=100000", KV_PINV_NO },
};
