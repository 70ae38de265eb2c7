/* budget.c - buffer sizes and the --max-memory check (see budget.h). */
#include "kernels/partial.h"
#include "replay/budget.h"

replay_sizes replay_sizes_compute(const replay *r)
{
    const kv_replay_opts *o = r->o;
    int root = r->rank == 0, br = o->bound_ratio != 0;
    int64_t S = r->S, B = r->B, dv = r->dv;
    size_t nst = (size_t)(r->M * S * B) * KV_PSTATE_LEN(dv); /* doubles: states of one batch */
    size_t gl = (size_t)(dv * dv);
    size_t all = (size_t)(r->M * S * r->m);
    return (replay_sizes){
        .kstage = sizeof(float) * (size_t)(S * r->C * r->d),
        .vstage = sizeof(float) * (size_t)(S * r->C * dv),
        .gram = br ? sizeof(double) * (size_t)S * gl : 0,
        .queries = sizeof(float) * (size_t)(S * B * r->d),
        .send = sizeof(double) * nst,
        .recv = root ? sizeof(double) * nst : 0,
        .gsend = br ? sizeof(double) * (size_t)(B * S) * gl : 0,
        .gsum = br && root ? sizeof(double) * (size_t)(B * S) * gl : 0,
        .rel = root ? sizeof(double) * all : 0,
        .bound = root ? sizeof(double) * all : 0,
        .uidx = sizeof(int64_t) * (size_t)B,
        .zout = root && o->save_outputs ? sizeof(float) * (size_t)(S * B * dv) : 0,
        .ev = root ? sizeof(double) * (size_t)(S * dv) : 0,
    };
}

size_t replay_sizes_budgeted(const replay_sizes *z)
{
    return z->kstage + z->vstage + z->gram + z->queries + z->send + z->recv + z->gsend + z->gsum + z->rel + z->bound;
}

int replay_budget_check(const replay *r, kv_err *err)
{
    if (r->o->max_memory <= 0) return KV_OK;
    size_t buffers = replay_sizes_budgeted(&r->z);
    int64_t need = (int64_t)buffers, worst = 0;
    int worst_mi = -1;
    for (int mi = 0; mi < r->M; mi++) {
        const replay_instance *x = &r->inst[mi];
        if (!x->ops->max_bytes)
            return kv_seterr(err, KV_EINPUT, "--max-memory: method '%s' cannot bound its memory in advance", x->spec.text);
        int64_t b = 0;
        for (int64_t s = 0; s < r->S; s++) b += x->ops->max_bytes(x->st[s]);
        need += b;
        if (b > worst) { worst = b; worst_mi = mi; }
    }
    if (need > r->o->max_memory)
        return kv_seterr(err, KV_EINPUT, "--max-memory %lld: this rank would need up to %lld bytes (largest: %s %lld, "
                         "replay buffers %zu)", (long long)r->o->max_memory, (long long)need,
                         worst_mi >= 0 ? r->inst[worst_mi].spec.text : "-", (long long)worst, buffers);
    return KV_OK;
}
