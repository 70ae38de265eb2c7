/* registry.c - the method registry (one line per method), spec parsing
 * against the methods' tables, and `kvstream methods`. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "methods/method.h"

extern const kv_method_ops kv_method_exact;
extern const kv_method_ops kv_method_window;
extern const kv_method_ops kv_method_sinks;
extern const kv_method_ops kv_method_h2o;
extern const kv_method_ops kv_method_uniform;
extern const kv_method_ops kv_method_topk;
extern const kv_method_ops kv_method_quest;
extern const kv_method_ops kv_method_lsh;
extern const kv_method_ops kv_method_unmasked_window;
extern const kv_method_ops kv_method_window_subgen;
extern const kv_method_ops kv_method_subgen;
extern const kv_method_ops kv_method_kivi;
extern const kv_method_ops kv_method_qjl;
extern const kv_method_ops kv_method_tova;
extern const kv_method_ops kv_method_snapkv;
extern const kv_method_ops kv_method_balancekv;
extern const kv_method_ops kv_method_turboquant;
extern const kv_method_ops kv_method_expected_attention;

static const kv_method_ops *const registry[] = {
    &kv_method_exact,
    &kv_method_window,
    &kv_method_sinks,
    &kv_method_h2o,
    &kv_method_uniform,
    &kv_method_topk,
    &kv_method_quest,
    &kv_method_lsh,
    &kv_method_unmasked_window,
    &kv_method_window_subgen,
    &kv_method_subgen,
    &kv_method_kivi,
    &kv_method_qjl,
    &kv_method_tova,
    &kv_method_snapkv,
    &kv_method_balancekv,
    &kv_method_turboquant,
    &kv_method_expected_attention,
    NULL
};

/* Methods added at run time by a test binary (kv_method_register). */
enum { EXTRA_MAX = 8 };
static const kv_method_ops *extra[EXTRA_MAX];
static int nextra;

const kv_method_ops *kv_method_at(int i)
{
    int nreg = (int)(sizeof registry / sizeof *registry) - 1;
    if (i < 0) return NULL;
    return i < nreg ? registry[i] : i - nreg < nextra ? extra[i - nreg] : NULL;
}

const kv_method_ops *kv_method_find(const char *name)
{
    for (int i = 0; kv_method_at(i); i++)
        if (!strcmp(kv_method_at(i)->name, name)) return kv_method_at(i);
    return NULL;
}

int kv_method_register(const kv_method_ops *ops, kv_err *err)
{
    if (kv_method_find(ops->name))
        return kv_seterr(err, KV_EINPUT, "method %s: the name is taken", ops->name);
    if (nextra == EXTRA_MAX) return kv_seterr(err, KV_EINTERNAL, "method %s: more than %d added", ops->name, EXTRA_MAX);
    extra[nextra++] = ops;
    return KV_OK;
}

int64_t kv_rank_share(const kv_method_ctx *ctx, int64_t total)
{
    int64_t share;
    if (ctx->shard_tokens > 0 && ctx->n_total > 0)
        share = (int64_t)(((__int128)total * ctx->shard_tokens + ctx->n_total - 1) / ctx->n_total);
    else {
        int64_t P = ctx->nranks > 0 ? ctx->nranks : 1;
        share = total / P + (total % P != 0);
    }
    return share > 0 ? share : 1;
}

int64_t kv_rank_tokens_below(const kv_method_ctx *ctx, int64_t x)
{
    if (ctx->chunk <= 0 || ctx->nranks < 1 || ctx->rank < 0 || ctx->rank >= ctx->nranks) return -1;
    if (ctx->n_total > 0 && x > ctx->n_total) x = ctx->n_total;
    if (x <= 0) return 0;
    int64_t C = ctx->chunk, round = C * ctx->nranks, part = x % round - (int64_t)ctx->rank * C;
    return x / round * C + (part < 0 ? 0 : part > C ? C : part);
}

int kv_method_partial_by_select(const kv_method_ops *ops, void *state, const float *Q, int nq, int64_t p, double *st)
{
    if (nq <= 0) return KV_OK;
    int L = ops->select_len(state);
    int64_t *pp = malloc(sizeof(int64_t) * (size_t)nq);
    double *sel = malloc(sizeof(double) * (size_t)nq * (size_t)L);
    int rc = pp && sel ? KV_OK : KV_EINTERNAL;
    for (int q = 0; rc == KV_OK && q < nq; q++) pp[q] = p;
    if (rc == KV_OK) rc = ops->select(state, Q, pp, nq, sel);
    if (rc == KV_OK) rc = ops->partial_select(state, Q, pp, nq, sel, st);
    free(pp);
    free(sel);
    return rc;
}

int64_t kv_shard_limit(const kv_method_ctx *ctx)
{
    return ctx->shard_tokens > 0 ? ctx->shard_tokens : ctx->n_total;
}

int kv_merged_l_ok(double l, int64_t n)
{
    return l == 0 || (l >= 1 - 1e-12 && l <= (double)n * (1 + 1e-9) + 1e-9);
}

int kv_all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

const char *kv_method_names(void)
{
    static char buf[512];
    buf[0] = '\0';
    for (int i = 0; kv_method_at(i); i++) {
        if (i) strncat(buf, ", ", sizeof buf - strlen(buf) - 1);
        strncat(buf, kv_method_at(i)->name, sizeof buf - strlen(buf) - 1);
    }
    return buf;
}

int kv_method_parse(const kv_method_ops *ops, kv_spec *spec, kv_err *err)
{
    spec->cfg_of = NULL;
    if (ops->cfg_size > sizeof spec->cfg)
        return kv_seterr(err, KV_EINTERNAL, "method %s: config of %zu bytes exceeds KV_CFG_MAX", ops->name,
                         ops->cfg_size);
    memset(spec->cfg, 0, sizeof spec->cfg);
    if (kv_params_parse(ops->params, spec, spec->cfg, err)) return err->code;
    if (ops->check && ops->check(spec->cfg, spec, err)) return err->code;
    spec->cfg_of = ops;
    return KV_OK;
}

const void *kv_method_cfg(const kv_method_ops *ops, kv_spec *spec, kv_err *err)
{
    if (spec->cfg_of != ops && kv_method_parse(ops, spec, err)) return NULL;
    return spec->cfg;
}

int kv_method_check_specs(kv_spec *specs, int count, const kv_method_ctx *ctx, kv_err *err)
{
    for (int i = 0; i < count; i++) {
        const kv_method_ops *ops = kv_method_find(specs[i].method);
        if (!ops)
            return kv_seterr(err, KV_EINPUT, "--methods: unknown method '%s' (known: %s)", specs[i].method,
                             kv_method_names());
        if (specs[i].cfg_of != ops && kv_method_parse(ops, &specs[i], err)) return err->code;
        void *st = NULL;
        int rc = ops->create(&specs[i], ctx, &st, err);
        if (st) ops->free(st);
        if (rc) return rc;
    }
    return KV_OK;
}

/* headings of the kinds known today; a new kind is shown by its name alone */
static const char *kind_blurb(const char *kind)
{
    static const char *const k[][2] = {
        { "exact", "exact attention: references and exact algorithms" },
        { "eviction", "keep a bounded set of tokens exactly, drop the rest" },
        { "sampling", "keep a weighted random sample of the tokens" },
        { "sketch", "summarise the tokens in a sublinear sketch" },
        { "oracle", "references that hold every token and pick per query" },
        { "quantisation", "keep every token at reduced precision (memory counted as packed bits)" },
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++)
        if (!strcmp(k[i][0], kind)) return k[i][1];
    return "";
}

static const char *kind_of(const kv_method_ops *m) { return m->kind ? m->kind : "other"; }

void kv_methods_describe(FILE *f)
{
    fprintf(f, "Methods (--methods NAME[:KEY=VALUE,...],...); every method also takes name=<label>,\n"
               "the results group name (default: the spec text).\n");
    int n = 0;
    while (kv_method_at(n)) n++;
    for (int i = 0; i < n; i++) {
        const char *kind = kind_of(kv_method_at(i));
        int first = 1; /* kinds in order of first appearance */
        for (int j = 0; j < i && first; j++)
            if (!strcmp(kind_of(kv_method_at(j)), kind)) first = 0;
        if (!first) continue;
        const char *b = kind_blurb(kind);
        fprintf(f, "\n%s%s%s\n", kind, *b ? ": " : "", b);
        for (int j = i; j < n; j++) {
            const kv_method_ops *m = kv_method_at(j);
            if (strcmp(kind_of(m), kind)) continue;
            fprintf(f, "  %-16s %s\n", m->name, m->summary ? m->summary : "");
            fprintf(f, "  %-16s memory: %s\n", "", m->budget ? m->budget : "no budget: holds every token");
            if (kv_params_count(m->params) == 0) fprintf(f, "  %-16s no parameters\n", "");
            else kv_params_describe(m->params, f, "      ");
        }
    }
}

static const kv_param_def *param_in(const kv_param_def *defs, const char *name)
{
    for (const kv_param_def *d = defs; d && d->type != KV_PT_END; d++) {
        const kv_param_def *x = d->type == KV_PT_TABLE ? param_in(d->sub, name) : NULL;
        if (x) return x;
        if (d->type != KV_PT_TABLE && !strcmp(d->name, name)) return d;
    }
    return NULL;
}

const kv_param_def *kv_method_param(const kv_method_ops *ops, const char *name)
{
    return ops ? param_in(ops->params, name) : NULL;
}

int kv_method_takes_budget(const kv_method_ops *ops)
{
    const kv_param_def *d = kv_method_param(ops, "budget");
    return d && d->type == KV_PT_BUDGET;
}

void kv_methods_specs(FILE *f)
{
    fprintf(f, "# name kind spec pinv semantics budget seeded\n");
    for (int i = 0; kv_method_at(i); i++) {
        const kv_method_ops *m = kv_method_at(i);
        const char *spec = m->conform.spec;
        if (!spec) continue;
        int len = (int)strcspn(spec, ";"); /* the first case */
        fprintf(f, "%s %s %s%s%.*s pinv=%s semantics=%s budget=%s seeded=%s\n", m->name, kind_of(m), m->name,
                len ? ":" : "", len, spec, m->conform.pinv == KV_PINV_ROUNDING ? "yes" : "no",
                m->conform.semantics == KV_SEM_WINDOW_UNMASKED ? "window-unmasked" : "full",
                !kv_method_takes_budget(m) ? "no" : m->conform.budget_reads ? "reads" : "yes", kv_method_param(m, "seed") ? "yes" : "no");
    }
}
