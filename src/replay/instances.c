/* instances.c - method instances of a replay (see instances.h). */
#include <stdlib.h>
#include <string.h>
#include "core/budget.h"
#include "replay/instances.h"
#include "replay/shard.h"
#include "replay/streamref.h"

/* --budget X: budget=X into every spec whose method takes a budget and
 * that gives none (a spec's own budget= wins; its size parameters then
 * clash with it, which the method reports). */
static int run_budget(replay *r, kv_err *err)
{
    const char *X = r->o->budget;
    if (!X) return KV_OK;
    kv_budget b;
    kv_err e = { 0, "" };
    if (kv_budget_parse(X, &b, &e)) return kv_seterr(err, KV_EINPUT, "--budget: %s", e.msg);
    char kv[80];
    if (snprintf(kv, sizeof kv, "budget=%s", X) >= (int)sizeof kv)
        return kv_seterr(err, KV_EINPUT, "--budget '%s': too long", X);
    for (int i = 0; i < r->M; i++) {
        replay_instance *x = &r->inst[i];
        if (!kv_method_takes_budget(x->ops) || kv_spec_has(&x->spec, "budget")) continue;
        if (kv_spec_add_param(&x->spec, kv, err)) return err->code;
    }
    return KV_OK;
}

int replay_instances_new(replay *r, kv_err *err)
{
    kv_spec *specs = NULL;
    int ns = 0;
    if (kv_spec_parse_list(r->o->methods, &specs, &ns, err)) return err->code;
    /* the exact reference (first exact method), added when absent */
    int ref = -1, none = r->o->reference == KV_REF_NONE;
    for (int i = 0; i < ns && !none; i++)
        if (!strcmp(specs[i].method, "exact")) { ref = i; break; }
    r->M = ns + (ref < 0 && !none);
    if (r->M < 1) { free(specs); return kv_seterr(err, KV_EINPUT, "--methods: no method to run"); }
    r->inst = kv_calloc((size_t)r->M, sizeof *r->inst, err);
    if (!r->inst) { free(specs); return err->code; }
    for (int i = 0; i < ns; i++) r->inst[i].spec = specs[i];
    free(specs);
    if (ref < 0 && !none) {
        kv_spec *x = NULL;
        int one;
        if (kv_spec_parse_list("exact", &x, &one, err)) return err->code;
        for (int i = 0; i < ns; i++)
            if (!strcmp(r->inst[i].spec.label, "exact")) {
                free(x);
                return kv_seterr(err, KV_EINPUT, "--methods: the label 'exact' is reserved for the exact reference");
            }
        r->inst[ns].spec = x[0];
        free(x);
        ref = ns;
    }
    r->ref = ref; /* -1 with --reference none: an exact listed there is one more method */
    for (int i = 0; i < r->M; i++) {
        r->inst[i].ops = i == ref && r->o->reference == KV_REF_STREAM ? &replay_streamref_ops
                                                                     : kv_method_find(r->inst[i].spec.method);
        if (!r->inst[i].ops)
            return kv_seterr(err, KV_EINPUT, "--methods: unknown method '%s' (known: %s)", r->inst[i].spec.method,
                             kv_method_names());
    }
    return run_budget(r, err);
}

/* --budget-scope layer|trace: the trace must say which streams form a
 * layer, and every method with a budget must share it out (ops scoped). */
static int check_scope(const replay *r, kv_err *err)
{
    static const char *names[] = { "stream", "layer", "trace" };
    int sc = r->o->budget_scope;
    if (sc == KV_SCOPE_STREAM) return KV_OK;
    if (sc < 0 || sc > KV_SCOPE_TRACE) return kv_seterr(err, KV_EINPUT, "--budget-scope: unknown scope %d", sc);
    if (sc == KV_SCOPE_LAYER && (r->in->n_kv_heads <= 0 || r->S % r->in->n_kv_heads))
        return kv_seterr(err, KV_EINPUT,
                         "--budget-scope layer: the trace has no n_kv_heads attribute dividing its %lld streams "
                         "(traces recorded from a model have it; use stream or trace)", (long long)r->S);
    for (int mi = 0; mi < r->M; mi++) {
        const replay_instance *x = &r->inst[mi];
        if (x->ops->budget && !x->ops->scoped)
            return kv_seterr(err, KV_EINPUT, "--budget-scope %s: method '%s' shares a budget per stream only "
                             "(use --budget-scope stream)", names[sc], x->spec.text);
    }
    return KV_OK;
}

int replay_instances_create(replay *r, kv_err *err)
{
    const kv_replay_opts *o = r->o;
    if (check_scope(r, err)) return err->code;
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        x->st = kv_calloc((size_t)r->S, sizeof(void *), err);
        if (!x->st) return err->code;
        for (int64_t s = 0; s < r->S; s++) {
            kv_method_ctx ctx = { .d = (int)r->d, .dv = (int)r->dv, .scale = r->in->scale, .n_total = r->n,
                                  .stream = s, .rank = r->rank, .nranks = r->P, .seed = o->seed,
                                  .shard_tokens = replay_shard_tokens(r), .chunk = r->C,
                                  .semantics = o->semantics, .window = o->window,
                                  .kv_heads = r->in->n_kv_heads,
                                  .q_group = r->in->n_heads > 0 && r->in->n_kv_heads > 0
                                                 ? r->in->n_heads / r->in->n_kv_heads : 1,
                                  .budget_scope = o->budget_scope, .n_streams = r->S };
            kv_spec_reset(&x->spec);
            if (x->ops->create(&x->spec, &ctx, &x->st[s], err)) return err->code;
        }
    }
    for (int mi = 0; mi < r->M && (o->checkpoint || o->resume); mi++)
        if (!r->inst[mi].ops->save || !r->inst[mi].ops->load)
            return kv_seterr(err, KV_EINPUT, "--checkpoint/--resume: method '%s' cannot be checkpointed",
                             r->inst[mi].spec.text);
    return KV_OK;
}

void replay_instances_free(replay *r)
{
    for (int mi = 0; r->inst && mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        for (int64_t s = 0; x->st && s < r->S; s++)
            if (x->st[s]) x->ops->free(x->st[s]);
        free(x->st);
    }
    free(r->inst);
    r->inst = NULL;
}

int64_t replay_instance_bytes(const replay_instance *x, int64_t S)
{
    int64_t b = 0;
    for (int64_t s = 0; s < S; s++) b += (int64_t)x->ops->bytes(x->st[s]);
    return b;
}

void replay_instance_sample(replay_instance *x, int64_t S)
{
    int64_t b = replay_instance_bytes(x, S);
    if (b > x->peak) x->peak = b;
    if (b > x->epoch) x->epoch = b;
    if (b > x->dsub) x->dsub = b;
}

int replay_instance_decides(const replay_instance *x)
{
    const kv_method_ops *o = x->ops;
    return o->decide_need && o->decide_cands && o->decide_apply;
}

int64_t replay_instance_epoch(const replay *r, const replay_instance *x)
{
    if (!replay_instance_decides(x)) return x->epoch;
    return r->rank == 0 ? x->dpeak : 0;
}
