/* instances.c - method instances of a replay (see instances.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/budget.h"
#include "mpi/coll.h"
#include "replay/instances.h"
#include "replay/shard.h"

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
        x->run_budget = 1;
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
        r->inst[i].ops = kv_method_find(r->inst[i].spec.method);
        r->inst[i].streamed = i == ref && r->o->reference == KV_REF_STREAM;
        if (r->inst[i].streamed && r->o->semantics != KV_SEM_FULL)
            return kv_seterr(err, KV_EINPUT, "--reference stream: only with --semantics full");
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

static kv_method_ctx stream_ctx(const replay *r, int64_t s)
{
    const kv_replay_opts *o = r->o;
    return (kv_method_ctx){ .d = (int)r->d, .dv = (int)r->dv, .scale = r->in->scale, .n_total = r->n,
                            .stream = s, .rank = r->rank, .nranks = r->P, .seed = o->seed,
                            .shard_tokens = replay_shard_tokens(r), .chunk = r->C,
                            .semantics = o->semantics, .window = o->window,
                            .kv_heads = r->in->n_kv_heads,
                            .q_group = r->in->n_heads > 0 && r->in->n_kv_heads > 0
                                           ? r->in->n_heads / r->in->n_kv_heads : 1,
                            .budget_scope = o->budget_scope, .n_streams = r->S,
                            .kv_float16 = r->in->kv_float16 };
}

/* 1 if x's method makes its state for ctx with budget=B bytes instead of
 * the --budget it was given. */
static int fits(const replay_instance *x, const kv_method_ctx *ctx, int64_t B)
{
    kv_spec sp = x->spec;
    for (int i = 0; i < sp.np; i++)
        if (!strcmp(sp.p[i].key, "budget")) snprintf(sp.p[i].val, sizeof sp.p[i].val, "%lldB", (long long)B);
    sp.cfg_of = NULL; /* parse again */
    kv_spec_reset(&sp);
    kv_err e = { 0, "" };
    void *st = NULL;
    if (x->ops->create(&sp, ctx, &st, &e)) return 0;
    x->ops->free(st);
    return 1;
}

/* The smallest budget in bytes per stream at which x's method makes its
 * state for ctx (methods refuse a budget that does not hold their minimum
 * state: one token, one sample, 2-bit groups), by bisection between the
 * refused --budget and a budget it takes (exact's size, doubled up to 64
 * times that); -1 when none is taken (a refusal for another reason, which
 * stays an error).  Assumes a larger budget never fits worse. */
static int64_t min_budget(const replay *r, const replay_instance *x, const kv_method_ctx *ctx)
{
    kv_budget all = { KV_BUDGET_FRACTION, 1.0 }, given;
    kv_err e = { 0, "" };
    int64_t ex = kv_budget_bytes(&all, r->n, (int)r->d, (int)r->dv), lo = 0, hi = ex;
    if (!kv_budget_parse(r->o->budget, &given, &e)) lo = kv_budget_bytes(&given, r->n, (int)r->d, (int)r->dv);
    int64_t cap = ex < INT64_MAX / 64 ? 64 * ex : INT64_MAX / 2;
    if (hi <= lo) hi = lo < cap ? 2 * lo : cap + 1;
    while (hi <= cap && !fits(x, ctx, hi)) { lo = hi; hi = hi < cap ? 2 * hi : cap + 1; }
    if (hi > cap) return -1;
    while (hi - lo > 1) { /* refused at lo, made at hi */
        int64_t mid = lo + (hi - lo) / 2;
        if (fits(x, ctx, mid)) hi = mid;
        else lo = mid;
    }
    return hi;
}

int replay_instances_create(replay *r, kv_err *err)
{
    const kv_replay_opts *o = r->o;
    if (check_scope(r, err)) return err->code;
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        x->st = kv_calloc((size_t)r->S, sizeof(void *), err);
        if (!x->st) return err->code;
        for (int64_t s = 0; s < r->S && !x->streamed; s++) {
            kv_method_ctx ctx = stream_ctx(r, s);
            kv_err e = { 0, "" };
            kv_spec_reset(&x->spec);
            if (!x->ops->create(&x->spec, &ctx, &x->st[s], &e)) continue;
            /* --budget too small for this method: left out (replay_instances_drop_unfit) unless --strict */
            if (e.code != KV_EINPUT || !x->run_budget || o->strict || (x->needs = min_budget(r, x, &ctx)) < 0)
                return kv_seterr(err, e.code, "%s", e.msg);
            break;
        }
    }
    for (int mi = 0; mi < r->M && (o->checkpoint || o->resume); mi++)
        if (!r->inst[mi].needs && (!r->inst[mi].ops->save || !r->inst[mi].ops->load))
            return kv_seterr(err, KV_EINPUT, "--checkpoint/--resume: method '%s' cannot be checkpointed",
                             r->inst[mi].spec.text);
    return KV_OK;
}

static void instance_free(replay_instance *x, int64_t S)
{
    for (int64_t s = 0; x->st && s < S; s++)
        if (x->st[s]) x->ops->free(x->st[s]);
    free(x->st);
    x->st = NULL;
}

int replay_instances_drop_unfit(replay *r, kv_err *err)
{
    int64_t *need = kv_calloc((size_t)r->M, sizeof *need, err);
    int bad = !need;
    if (kv_mpi_max_int(&bad, &bad, 1, r->comm) != MPI_SUCCESS || bad) {
        free(need);
        return kv_seterr(err, KV_EINTERNAL, "out of memory (methods that do not fit)");
    }
    for (int mi = 0; mi < r->M; mi++) need[mi] = r->inst[mi].needs;
    /* a method left out on one rank is left out on all: the largest need */
    if (kv_mpi_max_i64(need, need, r->M, r->comm) != MPI_SUCCESS) {
        free(need);
        return kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the methods' needs failed");
    }
    int nu = 0, keep = 0;
    for (int mi = 0; mi < r->M; mi++) nu += need[mi] > 0;
    if (nu && !(r->unfit = kv_calloc((size_t)nu, sizeof *r->unfit, err))) { free(need); return err->code; }
    kv_budget given;
    kv_err e = { 0, "" };
    int64_t B = r->o->budget && !kv_budget_parse(r->o->budget, &given, &e)
                    ? kv_budget_bytes(&given, r->n, (int)r->d, (int)r->dv) : 0;
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        if (need[mi] > 0) {
            r->unfit[r->n_unfit++] = (replay_unfit){ x->spec, need[mi], B };
            instance_free(x, r->S);
            continue;
        }
        if (mi == r->ref) r->ref = keep;
        r->inst[keep++] = *x;
    }
    r->M = keep;
    free(need);
    if (r->M < 1) return kv_seterr(err, KV_EINPUT, "--budget %s: no method fits it", r->o->budget);
    return KV_OK;
}

void replay_instances_free(replay *r)
{
    for (int mi = 0; r->inst && mi < r->M; mi++) instance_free(&r->inst[mi], r->S);
    free(r->inst);
    free(r->unfit);
    r->inst = NULL;
    r->unfit = NULL;
    r->n_unfit = 0;
}

int64_t replay_instance_bytes(const replay_instance *x, int64_t S)
{
    int64_t b = 0;
    for (int64_t s = 0; s < S && !x->streamed; s++) b += (int64_t)x->ops->bytes(x->st[s]);
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

int replay_instance_rebuilt(const replay_instance *x) { return x->ops->prefix_state && !x->streamed; }

int replay_instances_save(const replay *r, kv_buf *out, int64_t *lens, kv_err *err)
{
    for (int mi = 0; mi < r->M; mi++) {
        const replay_instance *x = &r->inst[mi];
        if (!x->ops->save) return kv_seterr(err, KV_EINPUT, "--checkpoint: method '%s' cannot be checkpointed", x->spec.text);
        kv_buf_put_i64(out, x->peak);
        kv_buf_put_f64(out, x->t_ingest);
        kv_buf_put_f64(out, x->t_query);
        for (int64_t s = 0; s < r->S && replay_instance_rebuilt(x); s++) {
            kv_method_extra e = { -1, -1, 0 };
            x->ops->extra(x->st[s], &e);
            kv_buf_put_i64(out, e.kept_tokens);
        }
        for (int64_t s = 0; s < r->S && !replay_instance_rebuilt(x) && !x->streamed; s++) {
            /* as kv_buf_put_arr would write it (length, then bytes), saved
             * straight into b: the length is the counting pass's */
            int64_t *len = &lens[mi * r->S + s];
            kv_buf_put_i64(out, out->count_only ? 0 : *len);
            size_t at = out->total;
            x->ops->save(x->st[s], out);
            if (out->failed)
                return kv_seterr(err, KV_EINTERNAL, "checkpoint: method '%s' could not save its state (out of memory, "
                                 "a part of it cannot be checkpointed, or the file could not be written)", x->spec.text);
            int64_t n = (int64_t)(out->total - at);
            if (out->count_only) *len = n;
            else if (n != *len)
                return kv_seterr(err, KV_EINTERNAL, "checkpoint: method '%s' saved %lld bytes of stream %lld, counted "
                                 "%lld (its save is not deterministic)", x->spec.text, (long long)n, (long long)s,
                                 (long long)*len);
        }
    }
    return KV_OK;
}

int replay_instances_load(replay *r, kv_rd *rd, int64_t *kept, kv_err *err)
{
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *x = &r->inst[mi];
        if (!x->ops->load) return kv_seterr(err, KV_EINPUT, "--resume: method '%s' cannot be checkpointed", x->spec.text);
        if (kv_rd_i64(rd, &x->peak, err) || kv_rd_f64(rd, &x->t_ingest, err) || kv_rd_f64(rd, &x->t_query, err))
            return err->code;
        for (int64_t s = 0; s < r->S; s++) {
            kept[mi * r->S + s] = -1;
            if (replay_instance_rebuilt(x) && kv_rd_i64(rd, &kept[mi * r->S + s], err)) return err->code;
        }
        for (int64_t s = 0; s < r->S && !replay_instance_rebuilt(x) && !x->streamed; s++) {
            int64_t n;
            kv_rd one;
            if (kv_rd_i64(rd, &n, err)) return err->code;
            if (n < 0 || (size_t)n > rd->len - rd->pos) return kv_seterr(err, KV_EINPUT, "checkpoint: method state is truncated");
            if (kv_rd_sub(rd, (size_t)n, &one, err)) return err->code; /* a view of its bytes, read as it goes */
            one.what = x->spec.method;
            if (x->ops->load(x->st[s], &one, err)) return err->code;
            if (one.pos != one.len)
                return kv_seterr(err, KV_EINPUT, "checkpoint: method '%s' state has trailing bytes", x->spec.text);
        }
        x->epoch = x->dsub = replay_instance_bytes(x, r->S); /* checkpoints fall between memory epochs */
        x->dpeak = 0;
    }
    return KV_OK;
}

