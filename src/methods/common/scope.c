/* scope.c - budget scopes (see scope.h). */
#include <math.h>
#include <stdlib.h>
#include "methods/common/scope.h"

int64_t kv_scope_streams(const kv_method_ctx *ctx)
{
    if (ctx->budget_scope == KV_SCOPE_LAYER && ctx->kv_heads > 0) return ctx->kv_heads;
    if (ctx->budget_scope == KV_SCOPE_TRACE && ctx->n_streams > 0) return ctx->n_streams;
    return 1;
}

int64_t kv_scope_share_bytes(const kv_budget *b, const kv_method_ctx *ctx)
{
    int64_t bytes = kv_budget_bytes(b, ctx->n_total, ctx->d, ctx->dv);
    if (b->kind == KV_BUDGET_FRACTION) return bytes;
    return bytes / kv_scope_streams(ctx);
}

int kv_scope_slots_lowest(kv_slots *const *sl, int ns, int L, kv_evkey *out)
{
    if (ns == 1) return kv_slots_lowest(sl[0], L, out);
    kv_evkey *one = malloc(sizeof(kv_evkey) * (size_t)L);
    if (!one) return KV_EINTERNAL;
    for (int i = 0; i < L; i++) out[i] = KV_EVKEY_NONE;
    for (int k = 0; k < ns; k++) {
        if (kv_slots_lowest(sl[k], L, one)) {
            free(one);
            return KV_EINTERNAL;
        }
        for (int i = 0; i < L && one[i].score != INFINITY; i++) one[i] = kv_scope_key(one[i], ns, k);
        kv_evict_merge(out, one, L);
    }
    free(one);
    return KV_OK;
}

int64_t kv_scope_slots_drop(kv_slots *sl, int ns, int k, kv_evkey cut)
{
    int64_t n = 0;
    while (sl->hsize[0] > 0 && kv_evkey_goes(kv_scope_key(kv_slots_key(sl, kv_slots_top(sl, 0)), ns, k), cut)) {
        kv_slots_drop(sl, kv_slots_pop(sl, 0));
        n++;
    }
    return n;
}

int kv_scope_floor_cuts(const kv_evkey *merged, int64_t L, int ns, int64_t need, const int64_t *cnt, int64_t f,
                        kv_evkey *cut, kv_evkey *next)
{
    const kv_evkey below = { -INFINITY, -INFINITY };
    if (f <= 0) {
        for (int k = 0; k < ns; k++) cut[k] = merged[need - 1];
        *next = merged[need];
        return KV_OK;
    }
    int64_t taken = 0, gone[ns];
    for (int k = 0; k < ns; k++) cut[k] = below, gone[k] = 0;
    *next = KV_EVKEY_NONE;
    for (int64_t i = 0; i < L && merged[i].score != INFINITY; i++) {
        int k = (int)((int64_t)merged[i].idx % ns);
        if (cnt[k] - gone[k] <= f) continue; /* the stream is at its floor */
        if (taken == need) {
            *next = merged[i];
            break;
        }
        cut[k] = merged[i];
        gone[k]++;
        taken++;
    }
    return taken == need ? KV_OK : KV_EINTERNAL;
}
