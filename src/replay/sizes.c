/* sizes.c - buffer sizes and the --max-memory check (see sizes.h). */
#include "kernels/partial.h"
#include "replay/sizes.h"

int64_t replay_gram_stage(const replay *r)
{
    /* 64 MiB of snapshots per rank: S = 32, dv = 128 staged for a whole
     * --batch 1024 would be 4.3 GB per rank (and as much again on rank 0) */
    int64_t one = r->S * r->dv * r->dv * (int64_t)sizeof(double);
    int64_t G = one > 0 ? ((int64_t)64 << 20) / one : 1;
    return G < 1 ? 1 : G > r->B ? r->B : G;
}

/* Entries of a feedback exchange: (m, l) per query of every feedback method
 * at one position (at most B queries), plus the error flag's pair. */
static size_t feedback_pairs(const replay *r)
{
    size_t nf = 0;
    for (int mi = 0; mi < r->M; mi++) nf += r->inst[mi].ops->feedback != NULL;
    return nf ? nf * (size_t)(r->S * r->B) + 1 : 0;
}

/* Doubles per query of the longest select list (0: no method selects). */
static size_t select_len(const replay *r)
{
    int L = 0;
    for (int mi = 0; mi < r->M; mi++) {
        const replay_instance *x = &r->inst[mi];
        if (!x->ops->select) continue;
        for (int64_t s = 0; s < r->S; s++) {
            int l = x->ops->select_len(x->st[s]);
            if (l > L) L = l;
        }
    }
    return (size_t)L;
}

replay_sizes replay_sizes_compute(const replay *r)
{
    const kv_replay_opts *o = r->o;
    int root = r->rank == 0, br = o->bound_ratio != 0;
    int64_t S = r->S, B = r->B, dv = r->dv;
    size_t nst = (size_t)(r->M * S * B) * KV_PSTATE_LEN(dv); /* doubles: states of one batch */
    size_t gl = (size_t)(dv * dv);
    size_t all = (size_t)(r->M * S * r->m);
    size_t G = (size_t)replay_gram_stage(r), ne = (size_t)(B * r->M);
    return (replay_sizes){
        .kstage = sizeof(float) * (size_t)(S * r->C * r->d),
        .vstage = sizeof(float) * (size_t)(S * r->C * dv),
        .gram = br ? sizeof(double) * (size_t)S * gl : 0,
        .queries = sizeof(float) * (size_t)(S * B * r->d),
        .send = sizeof(double) * nst,
        .recv = root ? sizeof(double) * nst : 0,
        .gsend = br ? sizeof(double) * G * (size_t)S * gl : 0,
        .gsum = br && root ? sizeof(double) * G * (size_t)S * gl : 0,
        .opn = br && root ? sizeof(double) * (size_t)(B * S) : 0,
        .vsq = br && root ? sizeof(double) * (size_t)(B * S) : 0,
        .ep = sizeof(int64_t) * ne,
        .epsum = root ? sizeof(int64_t) * ne : 0,
        .ml = sizeof(double) * 2 * feedback_pairs(r),
        .sel = sizeof(double) * (size_t)(S * B) * select_len(r),
        .rel = root ? sizeof(double) * all : 0,
        .cost = sizeof(double) * 3 * (size_t)(r->M * S * B),
        .costsum = root ? sizeof(double) * 3 * (size_t)(r->M * S * B) : 0,
        .rtok = root ? sizeof(double) * all : 0,
        .onr = root ? sizeof(double) * (size_t)(S * r->m) : 0,
        .bound = root ? sizeof(double) * all : 0,
        .uidx = sizeof(int64_t) * (size_t)B,
        .zout = root && (o->save_outputs || o->on_outputs) ? sizeof(float) * (size_t)(S * B * dv) : 0,
        .ev = root ? sizeof(double) * (size_t)(S * dv) : 0,
    };
}

size_t replay_sizes_budgeted(const replay_sizes *z)
{
    return z->kstage + z->vstage + z->gram + z->queries + z->send + z->recv + z->gsend + z->gsum + z->opn + z->vsq + z->ep +
           z->epsum + z->ml + z->sel + z->rel + z->bound + z->onr +
           z->cost + z->costsum + z->rtok;
}

size_t replay_sizes_total(const replay_sizes *z)
{
    return replay_sizes_budgeted(z) + z->uidx + z->zout + z->ev;
}

int replay_budget_check(const replay *r, kv_err *err)
{
    if (r->o->max_memory <= 0) return KV_OK;
    size_t buffers = replay_sizes_budgeted(&r->z);
    int64_t need = (int64_t)buffers, worst = 0;
    int worst_mi = -1;
    for (int mi = 0; mi < r->M; mi++) {
        const replay_instance *x = &r->inst[mi];
        if (x->streamed) continue; /* holds nothing */
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
