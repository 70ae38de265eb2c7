/* method_exact.c - exact attention: the rank keeps every key and value of its
 * shard (a plain KV cache) and answers each query with the exact kernel.
 *
 * store=f16 (the default, auto, on a float16 trace) holds keys and values as
 * IEEE half: exactly the trace's values, half the bytes held and read, and
 * the kernels (attn.h _f16) convert them back to the same floats, so the
 * answers are bitwise those of store=f32.
 *
 * Memory: (d + dv) * 4 bytes (2 with f16) per allocated row plus the run table.  The
 * rows are the whole shard, allocated by the first ingest (the shard size is
 * known up front), so memory counts what is allocated, not what is filled.  Under
 * --semantics window-unmasked-values it computes the full-cache reference of
 * ALGORITHMS.md section 3: tokens older than the last W keep their values but
 * their logit is replaced by 0. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/hugemem.h"
#include "kernels/attn.h"
#include "kernels/half.h"
#include "methods/method.h"
#include "kernels/partial.h"

typedef struct { int64_t first, local; } run; /* global index of local row */

enum { STORE_AUTO = 0, STORE_F32 = 1, STORE_F16 = 2 };

typedef struct {
    int64_t store;
} exact_cfg;
KV_CFG_FITS(exact_cfg);

static const kv_param_def exact_params[] = {
    KV_PARAM_ENUM(exact_cfg, store, "auto|f32|f16", STORE_AUTO,
                  "keys and values held as float32 or IEEE half (f16: float16 traces only; auto: f16 when the trace is float16)"),
    KV_PARAM_TABLE_END
};

typedef struct {
    kv_method_ctx ctx;
    void *K, *V;  /* rows of d, dv elements of esz bytes: float, or half */
    size_t esz;
    size_t n, cap;
    run *runs;
    size_t nruns, rcap;
    kv_query_cost cost; /* method.h: cost */
} exact_state;

extern const kv_method_ops kv_method_exact;

static int exact_create(kv_spec *spec, const kv_method_ctx *ctx, void **out, kv_err *err)
{
    const exact_cfg *c = kv_method_cfg(&kv_method_exact, spec, err);
    if (!c) return err->code;
    if (c->store == STORE_F16 && !ctx->kv_float16)
        return kv_seterr(err, KV_EINPUT, "%s: store=f16 needs a trace whose keys and values are float16 "
                         "(this one's would be rounded): use store=f32 or auto", spec->text);
    exact_state *s = kv_calloc(1, sizeof *s, err);
    if (!s) return err->code;
    s->ctx = *ctx;
    s->esz = c->store == STORE_F16 || (c->store == STORE_AUTO && ctx->kv_float16) ? sizeof(uint16_t) : sizeof(float);
    *out = s;
    return KV_OK;
}

/* Capacity for need rows: the whole shard at once when its size is known
 * (what exact will hold anyway, so memory counts capacity without doubling
 * slack), else 1024 doubled.  A function of need alone, so a restored
 * checkpoint gets the capacity the saved state had. */
static size_t cap_for(const exact_state *s, size_t need, int rows)
{
    if (rows && s->ctx.shard_tokens > 0 && need <= (size_t)s->ctx.shard_tokens) return (size_t)s->ctx.shard_tokens;
    size_t nc = rows ? 1024 : 16;
    while (nc < need) nc *= 2;
    return nc;
}

static int grow_to(void **p, size_t *cap, size_t nc, size_t elem, kv_err *err)
{
    if (nc <= *cap) return KV_OK;
    void *q = realloc(*p, nc * elem);
    if (!q) return kv_seterr(err, KV_EINTERNAL, "exact: out of memory holding %zu tokens", nc);
    kv_mem_hugepages((char *)q + *cap * elem, (nc - *cap) * elem); /* the part not touched yet */
    *p = q;
    *cap = nc;
    return KV_OK;
}

static int grow(const exact_state *s, void **p, size_t *cap, size_t need, size_t elem, int rows, kv_err *err)
{
    return need <= *cap ? KV_OK : grow_to(p, cap, cap_for(s, need, rows), elem, err);
}

/* n rows of w floats into the half array H from row at: every one a
 * float16 value (the trace is), else an error naming the token */
static int half_rows(void *H, size_t at, const float *X, size_t n, int w, int64_t first, const char *what, kv_err *err)
{
    size_t m = n * (size_t)w, i = kv_f32_to_half_exact(X, m, (uint16_t *)H + at * (size_t)w);
    if (i == m) return KV_OK;
    return kv_seterr(err, KV_EINPUT, "exact: store=f16: %s %.9g of token %lld is not a float16 value", what, (double)X[i],
                     (long long)(first + (int64_t)(i / (size_t)w)));
}

static int exact_ingest(void *state, const float *K, const float *V, int64_t first, size_t n, kv_err *err)
{
    exact_state *s = state;
    int d = s->ctx.d, dv = s->ctx.dv;
    size_t kc = s->cap, vc = s->cap;
    if (grow(s, &s->K, &kc, s->n + n, s->esz * (size_t)d, 1, err)) return err->code;
    if (grow(s, &s->V, &vc, s->n + n, s->esz * (size_t)dv, 1, err)) return err->code;
    s->cap = kc < vc ? kc : vc;
    if (s->esz == sizeof(float)) {
        memcpy((float *)s->K + s->n * d, K, n * d * sizeof(float));
        memcpy((float *)s->V + s->n * dv, V, n * dv * sizeof(float));
    } else if (half_rows(s->K, s->n, K, n, d, first, "key", err) || half_rows(s->V, s->n, V, n, dv, first, "value", err)) {
        return err->code;
    }
    /* a new run unless this block continues the previous one */
    if (!s->nruns || s->runs[s->nruns - 1].first + (int64_t)(s->n - s->runs[s->nruns - 1].local) != first) {
        if (grow(s, (void **)&s->runs, &s->rcap, s->nruns + 1, sizeof(run), 0, err)) return err->code;
        s->runs[s->nruns++] = (run){ first, (int64_t)s->n };
    }
    s->n += n;
    return KV_OK;
}

/* number of held tokens with global index < g */
static size_t held_below(const exact_state *s, int64_t g)
{
    size_t below = 0;
    for (size_t r = 0; r < s->nruns; r++) {
        size_t end = r + 1 < s->nruns ? (size_t)s->runs[r + 1].local : s->n;
        size_t len = end - (size_t)s->runs[r].local;
        if (g <= s->runs[r].first) break;
        int64_t take = g - s->runs[r].first;
        below += (size_t)take < len ? (size_t)take : len;
    }
    return below;
}

/* nq queries at prefix p over the first hi held tokens (those < p):
 * the older ones' values only under window-unmasked-values (lo of them),
 * a key and a value of the others, 2 (d + dv) flops each. */
static void exact_count(exact_state *s, int nq, size_t lo, size_t hi)
{
    double d = s->ctx.d, dv = s->ctx.dv, full = (double)(hi - lo);
    kv_cost_add(&s->cost, nq, (double)s->esz * ((double)lo * dv + full * (d + dv)), (double)hi,
                (double)lo * dv + 2.0 * full * (d + dv));
}

static int exact_answer(exact_state *s, const float *Q, int nq, int64_t p, size_t hi, double *st)
{
    int d = s->ctx.d, dv = s->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    size_t lo = 0;
    if (s->ctx.semantics == KV_SEM_WINDOW_UNMASKED && p - s->ctx.window > 0 && nq > 0) {
        /* tokens older than the window: logit 0, value kept */
        lo = held_below(s, p - s->ctx.window);
        if (lo > 0) {
            double *old = malloc(sizeof(double) * sl);
            if (!old) return KV_EINTERNAL;
            old[KV_PS_M] = 0.0;
            old[KV_PS_L] = (double)lo;
            old[KV_PS_L2] = (double)lo;
            for (int c = 0; c < dv; c++) old[KV_PS_U + c] = 0.0;
            float *row = malloc(sizeof(float) * (size_t)dv);
            if (!row) {
                free(old);
                return KV_EINTERNAL;
            }
            for (size_t i = 0; i < lo; i++) {
                const float *v = s->esz == sizeof(float) ? (const float *)s->V + i * dv : row;
                if (v == row) kv_half_to_f32((const uint16_t *)s->V + i * dv, (size_t)dv, row);
                for (int c = 0; c < dv; c++) old[KV_PS_U + c] += v[c];
            }
            free(row);
            for (int q = 0; q < nq; q++) memcpy(st + q * sl, old, sizeof(double) * sl);
            free(old);
        }
    }
    exact_count(s, nq, lo, hi);
    if (s->esz == sizeof(float))
        return kv_attn_fold_par(Q, nq, (const float *)s->K + lo * d, (const float *)s->V + lo * dv, hi - lo, d, dv,
                                (float)s->ctx.scale, st);
    return kv_attn_fold_par_f16(Q, nq, (const uint16_t *)s->K + lo * d, (const uint16_t *)s->V + lo * dv, hi - lo, d,
                                dv, (float)s->ctx.scale, st);
}

static int exact_partial(void *state, const float *Q, int nq, int64_t p, double *st)
{
    exact_state *s = state;
    return exact_answer(s, Q, nq, p, s->n, st);
}

/* Queries at prefixes p[0] <= .. <= p[nq - 1] (method.h): one pass of the
 * multi-position kernel over the held tokens; under window-unmasked-values
 * (a different window per prefix) one prefix at a time. */
static int exact_partial_batch(void *state, const float *Q, const int64_t *p, int nq, double *st)
{
    exact_state *s = state;
    int d = s->ctx.d, dv = s->ctx.dv;
    size_t sl = KV_PSTATE_LEN(dv);
    if (nq <= 0) return KV_OK;
    if (s->ctx.semantics == KV_SEM_WINDOW_UNMASKED) {
        for (int i = 0; i < nq;) {
            int g = 1;
            while (i + g < nq && p[i + g] == p[i]) g++;
            int rc = exact_answer(s, Q + (size_t)i * d, g, p[i], held_below(s, p[i]), st + (size_t)i * sl);
            if (rc) return rc;
            i += g;
        }
        return KV_OK;
    }
    size_t *len = malloc(sizeof(size_t) * (size_t)nq);
    if (!len) return KV_EINTERNAL;
    for (int i = 0; i < nq; i++) {
        len[i] = i > 0 && p[i] == p[i - 1] ? len[i - 1] : held_below(s, p[i]);
        kv_partial_clear(st + (size_t)i * sl, dv);
    }
    /* one pass reads the longest prefix once; each query works on its own */
    double tok = 0;
    for (int i = 0; i < nq; i++) tok += (double)len[i];
    kv_cost_add(&s->cost, 1, (double)s->esz * (double)len[nq - 1] * (d + dv), tok, 2.0 * tok * (d + dv));
    float sc = (float)s->ctx.scale;
    int rc = s->esz == sizeof(float) ? kv_attn_fold_multi(Q, nq, len, s->K, s->V, d, dv, sc, st)
                                     : kv_attn_fold_multi_f16(Q, nq, len, s->K, s->V, d, dv, sc, st);
    free(len);
    return rc;
}

static size_t exact_bytes(const void *state)
{
    const exact_state *s = state;
    return s->cap * (size_t)(s->ctx.d + s->ctx.dv) * s->esz + s->rcap * sizeof(run);
}

static void exact_extra(const void *state, kv_method_extra *x)
{
    const exact_state *s = state;
    x->clusters = -1;
    x->kept_tokens = (int64_t)s->n;
}

static void exact_cost(const void *state, kv_query_cost *c)
{
    *c = ((const exact_state *)state)->cost;
}

static void exact_free(void *state)
{
    exact_state *s = state;
    if (!s) return;
    free(s->K);
    free(s->V);
    free(s->runs);
    free(s);
}

static void exact_save(const void *state, kv_buf *out)
{
    const exact_state *s = state;
    kv_buf_put_arr(out, s->K, s->n * (size_t)s->ctx.d * s->esz);
    kv_buf_put_arr(out, s->V, s->n * (size_t)s->ctx.dv * s->esz);
    kv_buf_put_arr(out, s->runs, s->nruns * sizeof(run));
}

/* 1 if the m floats (esz 4) or halves (esz 2) at A are all finite */
static int all_finite(const void *A, size_t m, size_t esz)
{
    for (size_t i = 0; i < m; i++)
        if (esz == sizeof(float) ? !isfinite(((const float *)A)[i]) : (((const uint16_t *)A)[i] & 0x7c00u) == 0x7c00u)
            return 0;
    return 1;
}

static int exact_load(void *state, kv_rd *in, kv_err *err)
{
    exact_state *s = state;
    size_t nk, nv, nr;
    void *K = NULL, *V = NULL, *R = NULL;
    size_t lim = (size_t)(s->ctx.shard_tokens > 0 ? s->ctx.shard_tokens : s->ctx.n_total);
    if (kv_rd_arr(in, &K, s->esz * (size_t)s->ctx.d, lim, &nk, err) ||
        kv_rd_arr(in, &V, s->esz * (size_t)s->ctx.dv, lim, &nv, err) ||
        kv_rd_arr(in, &R, sizeof(run), lim, &nr, err) || nk != nv || (nk && !nr)) {
        free(K); free(V); free(R);
        return err->code ? err->code : kv_seterr(err, KV_EINPUT, "checkpoint: exact state is inconsistent");
    }
    /* runs: local rows from 0 up, global indices in stream order with gaps
     * between runs, all within the stream; keys and values finite */
    const run *rr = R;
    int bad = 0;
    for (size_t r = 0; r < nr && !bad; r++) {
        int64_t end = r + 1 < nr ? rr[r + 1].local : (int64_t)nk;
        bad = (r == 0 ? rr[r].local != 0 : rr[r].local <= rr[r - 1].local) || end <= rr[r].local ||
              end > (int64_t)nk || rr[r].first < 0 || rr[r].first > s->ctx.n_total - (end - rr[r].local) ||
              (r > 0 && rr[r].first <= rr[r - 1].first + (rr[r].local - rr[r - 1].local));
    }
    bad = bad || !all_finite(K, nk * (size_t)s->ctx.d, s->esz) || !all_finite(V, nv * (size_t)s->ctx.dv, s->esz);
    if (bad) {
        free(K); free(V); free(R);
        return kv_seterr(err, KV_EINPUT, "checkpoint: exact state has a bad run table or value");
    }
    free(s->K); free(s->V); free(s->runs);
    s->K = K; s->V = V; s->runs = R;
    s->n = nk;
    s->nruns = nr;
    s->cap = s->rcap = 0;
    /* the capacities the saved state had (cap_for) */
    size_t kc = nk, vc = nk;
    s->rcap = nr;
    if (nk) {
        s->cap = nk;
        if (grow_to(&s->K, &kc, cap_for(s, nk, 1), s->esz * (size_t)s->ctx.d, err) ||
            grow_to(&s->V, &vc, cap_for(s, nk, 1), s->esz * (size_t)s->ctx.dv, err) ||
            grow_to((void **)&s->runs, &s->rcap, cap_for(s, nr, 0), sizeof(run), err))
            return err->code;
        s->cap = kc < vc ? kc : vc;
    }
    return KV_OK;
}

static int64_t exact_max_bytes(const void *state)
{
    const exact_state *s = state;
    int64_t n = s->ctx.shard_tokens > 0 ? s->ctx.shard_tokens : s->ctx.n_total;
    /* the capacities cap_for gives n rows; one run per shard chunk at most (a chunk is >= 1 token) */
    return (int64_t)cap_for(s, (size_t)n, 1) * (int64_t)(s->ctx.d + s->ctx.dv) * (int64_t)s->esz +
           (int64_t)cap_for(s, (size_t)n, 0) * (int64_t)sizeof(run);
}

const kv_method_ops kv_method_exact = {
    .name = "exact",
    .kind = "exact",
    .summary = "exact softmax attention over every token of the shard (the reference)",
    .budget = NULL,
    .params = exact_params,
    .cfg_size = sizeof(exact_cfg),
    .create = exact_create,
    .ingest = exact_ingest,
    .partial = exact_partial,
    .partial_batch = exact_partial_batch,
    .bytes = exact_bytes,
    .extra = exact_extra,
    .cost = exact_cost,
    .free = exact_free,
    .save = exact_save,
    .load = exact_load,
    .prefix_state = 1,
    .max_bytes = exact_max_bytes,
    .conform = { "", KV_PINV_ROUNDING },
};
