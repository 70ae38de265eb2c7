/* methods.c - the method registry: one line per method. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "methods/method.h"

extern const kv_method_ops kv_method_exact;
extern const kv_method_ops kv_method_window;
extern const kv_method_ops kv_method_sinks;
extern const kv_method_ops kv_method_h2o;
extern const kv_method_ops kv_method_uniform;
extern const kv_method_ops kv_method_topk;
extern const kv_method_ops kv_method_unmasked_window;
extern const kv_method_ops kv_method_window_subgen;
extern const kv_method_ops kv_method_subgen;

static const kv_method_ops *const registry[] = {
    &kv_method_exact,
    &kv_method_window,
    &kv_method_sinks,
    &kv_method_h2o,
    &kv_method_uniform,
    &kv_method_topk,
    &kv_method_unmasked_window,
    &kv_method_window_subgen,
    &kv_method_subgen,
    NULL
};

const kv_method_ops *kv_method_find(const char *name)
{
    for (int i = 0; registry[i]; i++)
        if (!strcmp(registry[i]->name, name)) return registry[i];
    return NULL;
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

int64_t kv_shard_limit(const kv_method_ctx *ctx)
{
    return ctx->shard_tokens > 0 ? ctx->shard_tokens : ctx->n_total;
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
    for (int i = 0; registry[i]; i++) {
        if (i) strncat(buf, ", ", sizeof buf - strlen(buf) - 1);
        strncat(buf, registry[i]->name, sizeof buf - strlen(buf) - 1);
    }
    return buf;
}

int kv_method_check_specs(kv_spec *specs, int count, const kv_method_ctx *ctx, kv_err *err)
{
    for (int i = 0; i < count; i++) {
        const kv_method_ops *ops = kv_method_find(specs[i].method);
        if (!ops)
            return kv_seterr(err, KV_EINPUT, "--methods: unknown method '%s' (known: %s)", specs[i].method,
                             kv_method_names());
        void *st = NULL;
        kv_spec_reset(&specs[i]);
        int rc = ops->create(&specs[i], ctx, &st, err);
        if (st) ops->free(st);
        kv_spec_reset(&specs[i]);
        if (rc) return rc;
    }
    return KV_OK;
}

void kv_methods_describe(FILE *f)
{
    for (int i = 0; registry[i]; i++) fprintf(f, "%-16s %s\n", registry[i]->name, registry[i]->usage);
}
