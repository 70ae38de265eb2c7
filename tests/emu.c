/* emu.c - P ranks emulated in one process (emu.h). */
#include <stdlib.h>
#include <string.h>
#include "emu.h"
#include "kernels/partial.h"
#include "kernels/topk_merge.h"
#include "testutil.h"

kv_method_ctx emu_rank_ctx(const kv_method_ctx *base, int P, int64_t C, int r)
{
    kv_method_ctx c = *base;
    c.rank = r;
    c.nranks = P;
    c.chunk = C;
    c.shard_tokens = 0; /* the rank's chunk-cyclic shard, as the driver says */
    for (int64_t t = 0; t < c.n_total; t += C)
        if ((t / C) % P == r) c.shard_tokens += c.n_total - t < C ? c.n_total - t : C;
    return c;
}

void emu_close(emu *e)
{
    for (int r = 0; r < e->P; r++)
        if (e->inst[r]) e->ops->free(e->inst[r]);
    free(e->spec);
    memset(e, 0, sizeof *e);
}

int emu_open(emu *e, const char *text, const kv_method_ctx *base, int P, int64_t C, kv_err *err)
{
    return emu_open_ops(e, NULL, text, base, P, C, err);
}

int emu_open_ops(emu *e, const kv_method_ops *ops, const char *text, const kv_method_ctx *base, int P, int64_t C,
                 kv_err *err)
{
    memset(e, 0, sizeof *e);
    int cnt;
    if (P < 1 || P > EMU_MAXP) return kv_seterr(err, KV_EINPUT, "emu: %d ranks, at most %d", P, EMU_MAXP);
    if (kv_spec_parse_list(text, &e->spec, &cnt, err)) return err->code;
    e->ops = ops ? ops : kv_method_find(e->spec[0].method);
    if (!e->ops) {
        kv_seterr(err, KV_EINPUT, "unknown method '%s'", e->spec[0].method);
        emu_close(e);
        return err->code;
    }
    e->P = P;
    e->d = base->d;
    e->dv = base->dv;
    e->C = C;
    kv_rng_seed(&e->rng, 7, (uint64_t)P, (uint64_t)C);
    for (int r = 0; r < P; r++) {
        kv_method_ctx c = emu_rank_ctx(base, P, C, r);
        CHECK(kv_rank_tokens_below(&c, c.n_total) == c.shard_tokens, "kv_rank_tokens_below(n) != shard (P=%d r=%d)",
              P, r);
        kv_spec_reset(&e->spec[0]);
        if (e->ops->create(&e->spec[0], &c, &e->inst[r], err)) {
            emu_close(e);
            return err->code;
        }
    }
    return KV_OK;
}

static void sample(emu *e, int r)
{
    size_t b = e->ops->bytes(e->inst[r]);
    if (b > e->epoch[r]) e->epoch[r] = b;
}

void emu_end_epoch(emu *e)
{
    size_t sum = 0;
    for (int r = 0; r < e->P; r++) {
        sum += e->epoch[r];
        e->epoch[r] = 0;
    }
    if (sum > e->worst) e->worst = sum;
}

/* Tokens [fed, p) to their owners, in random blocks within chunks. */
static void feed(emu *e, const float *K, const float *V, int64_t p)
{
    while (e->fed < p) {
        int64_t end = (e->fed / e->C + 1) * e->C;
        if (end > p) end = p;
        int r = (int)((e->fed / e->C) % e->P);
        while (e->fed < end) {
            int64_t len = 1 + (int64_t)kv_rng_below(&e->rng, (uint64_t)(end - e->fed));
            kv_err err = { 0 };
            int rc = e->ops->ingest(e->inst[r], K + e->fed * e->d, V + e->fed * e->dv, e->fed, (size_t)len, &err);
            CHECK(rc == KV_OK, "ingest: %s", err.msg);
            sample(e, r);
            e->fed += len;
        }
    }
}

/* method.h: the decide hooks at point x, as replay/decide.c runs them
 * (one stream: groups of one), the lists merged in rank order. */
static void decide(emu *e, int64_t x, int at_query)
{
    const kv_method_ops *o = e->ops;
    if (!o->decide_need) return;
    int64_t need = o->decide_need(e->inst[0], x, at_query);
    for (int r = 1; r < e->P; r++) CHECK(o->decide_need(e->inst[r], x, at_query) == need, "need differs on rank %d", r);
    /* a state only grows between two points: the sum of the ranks' peaks
     * since the last one is what they held together (replay/decide.c) */
    emu_end_epoch(e);
    if (need <= 0) return;
    int L = (int)need + 1;
    size_t hl = o->decide_halo_len ? o->decide_halo_len(e->inst[0], x) : 0;
    double *halo = calloc(hl + 1, sizeof(double)), *part = calloc(hl + 1, sizeof(double));
    kv_evkey *g = malloc(sizeof(kv_evkey) * (size_t)L), *k = malloc(sizeof(kv_evkey) * (size_t)L);
    CHECK(halo && part && g && k, "out of memory");
    if (halo && part && g && k) {
        for (int r = 0; r < e->P && hl; r++) {
            for (size_t i = 0; i < hl; i++) part[i] = 0;
            o->decide_halo(e->inst[r], x, part);
            for (size_t i = 0; i < hl; i++) halo[i] += part[i];
        }
        for (int r = 0; r < e->P; r++) {
            CHECK(o->decide_cands(&e->inst[r], 1, x, hl ? halo : NULL, L, r ? k : g) == KV_OK, "decide_cands");
            if (r) kv_evict_merge(g, k, L);
        }
        for (int r = 0; r < e->P; r++) {
            CHECK(o->decide_apply(&e->inst[r], 1, x, g, need) == KV_OK, "decide_apply");
            sample(e, r);
        }
    }
    free(halo);
    free(part);
    free(g);
    free(k);
}

void emu_advance(emu *e, const float *K, const float *V, int64_t p)
{
    emu_end_epoch(e);
    /* a decider's points between query positions: tokens < x, then its decisions */
    int64_t every = e->ops->decide_every ? e->ops->decide_every(e->inst[0]) : 0;
    for (int64_t x = every > 0 ? (e->fed / every + 1) * every : p; x < p; x += every) {
        feed(e, K, V, x);
        decide(e, x, 0);
    }
    /* the driver's promise before it ingests up to p (method.h: horizon) */
    for (int r = 0; r < e->P; r++) {
        if (e->ops->horizon) e->ops->horizon(e->inst[r], p);
        sample(e, r);
    }
    feed(e, K, V, p);
    decide(e, p, 1);
}

void emu_partial(emu *e, const float *Q, int nq, int64_t p, double *st)
{
    size_t sl = KV_PSTATE_LEN(e->dv);
    double *tmp = malloc(sizeof(double) * sl * (size_t)nq), *ml = malloc(sizeof(double) * 2 * (size_t)nq);
    CHECK(tmp && ml, "out of memory");
    if (!tmp || !ml) {
        free(tmp);
        free(ml);
        return;
    }
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, e->dv);
    for (int r = 0; r < e->P; r++) {
        CHECK(e->ops->partial(e->inst[r], Q, nq, p, tmp) == KV_OK, "partial");
        for (int q = 0; q < nq; q++) kv_partial_merge(st + q * sl, tmp + q * sl, e->dv);
        sample(e, r);
    }
    /* the merged (m, l) go back to every rank (method.h: feedback) */
    for (int q = 0; q < nq; q++) {
        ml[2 * q] = st[q * sl + KV_PS_M];
        ml[2 * q + 1] = st[q * sl + KV_PS_L];
    }
    for (int r = 0; e->ops->feedback && r < e->P; r++) {
        CHECK(e->ops->feedback(e->inst[r], Q, nq, p, ml) == KV_OK, "feedback");
        sample(e, r);
    }
    free(tmp);
    free(ml);
}

void emu_query(emu *e, const float *K, const float *V, const float *Q, int nq, int64_t p, double *st)
{
    emu_advance(e, K, V, p);
    emu_partial(e, Q, nq, p, st);
}

void emu_select(emu *e, const float *Q, const int64_t *p, int nq, double *gsel, double *st)
{
    int L = e->ops->select_len(e->inst[0]);
    size_t sl = KV_PSTATE_LEN(e->dv);
    double *sel = malloc(sizeof(double) * (size_t)L * (size_t)nq), *tmp = malloc(sizeof(double) * sl * (size_t)nq);
    CHECK(sel && tmp, "out of memory");
    for (int r = 0; sel && tmp && r < e->P; r++) {
        CHECK(e->ops->select_len(e->inst[r]) == L, "select_len differs on rank %d", r);
        CHECK(e->ops->select(e->inst[r], Q, p, nq, r ? sel : gsel) == KV_OK, "select");
        for (int q = 0; r && q < nq; q++) kv_topk_merge(gsel + (size_t)q * L, sel + (size_t)q * L, L);
    }
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, e->dv);
    for (int r = 0; sel && tmp && r < e->P; r++) {
        CHECK(e->ops->partial_select(e->inst[r], Q, p, nq, gsel, tmp) == KV_OK, "partial_select");
        for (int q = 0; q < nq; q++) kv_partial_merge(st + q * sl, tmp + q * sl, e->dv);
    }
    free(sel);
    free(tmp);
}

size_t emu_bytes(const emu *e)
{
    size_t b = 0;
    for (int r = 0; r < e->P; r++) b += e->ops->bytes(e->inst[r]);
    return b;
}

int64_t emu_kept(const emu *e)
{
    int64_t k = 0;
    for (int r = 0; r < e->P; r++) {
        kv_method_extra ex = { -1, -1, 0 };
        e->ops->extra(e->inst[r], &ex);
        k += ex.kept_tokens;
    }
    return k;
}
