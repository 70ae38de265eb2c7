/* decide.c - global eviction decisions (see decide.h). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include "mpi/agree.h"
#include "mpi/coll.h"
#include "mpi/merge.h"
#include "replay/decide.h"
#include "replay/instances.h"

void replay_decide_free(replay_decide *dz)
{
    free(dz->need);
    free(dz->keys);
    free(dz->halo);
    *dz = (replay_decide){ 0 };
}

int replay_decide_any(const replay *r)
{
    for (int mi = 0; mi < r->M; mi++)
        if (replay_instance_decides(&r->inst[mi])) return 1;
    return 0;
}

int64_t replay_decide_next(const replay *r, int64_t x)
{
    int64_t best = INT64_MAX;
    for (int mi = 0; mi < r->M; mi++) {
        const replay_instance *in = &r->inst[mi];
        if (!replay_instance_decides(in) || !in->ops->decide_every || r->S < 1) continue;
        int64_t e = in->ops->decide_every(in->st[0]);
        if (e <= 0) continue;
        int64_t nx = (x / e + 1) * e;
        if (nx > x && nx < best) best = nx;
    }
    return best;
}

static int group_size(const replay *r, const replay_instance *x)
{
    int g = x->ops->decide_group && r->S > 0 ? x->ops->decide_group(x->st[0]) : 1;
    return g >= 1 && r->S % g == 0 ? g : 1;
}

static int grow(void **p, size_t *cap, size_t n, size_t size)
{
    if (n <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < n) c *= 2;
    void *q = realloc(*p, c * size);
    if (!q) return 1;
    *p = q;
    *cap = c;
    return 0;
}

/* Every instance's need at x (all streams: each moves its counters);
 * returns the groups with need > 0, sets *L (max need + 1 + extra) and *hl (halo
 * doubles in all).  Streams of a group must agree: else an internal error. */
static size_t needs(replay_decide *dz, replay *r, int64_t x, int at_query, int64_t *L, size_t *hl, kv_err *err)
{
    size_t ng = 0, gi = 0;
    *L = 0;
    *hl = 0;
    for (int mi = 0; mi < r->M; mi++) ng += replay_instance_decides(&r->inst[mi]) ? (size_t)(r->S / group_size(r, &r->inst[mi])) : 0;
    if (grow((void **)&dz->need, &dz->need_cap, ng, sizeof(int64_t))) {
        kv_seterr(err, KV_EINTERNAL, "out of memory for eviction decisions");
        return 0;
    }
    size_t live = 0;
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *in = &r->inst[mi];
        if (!replay_instance_decides(in)) continue;
        int g = group_size(r, in);
        for (int64_t s0 = 0; s0 < r->S; s0 += g, gi++) {
            int64_t need = 0;
            for (int k = 0; k < g; k++) {
                int64_t n = in->ops->decide_need(in->st[s0 + k], x, at_query);
                if (k == 0) need = n;
                else if (n != need)
                    kv_seterr(err, KV_EINTERNAL, "method %s: streams of one decision group disagree at %lld",
                              in->spec.label, (long long)x);
            }
            dz->need[gi] = need;
            if (need <= 0) continue;
            live++;
            int64_t len = need + 1 + (in->ops->decide_extra ? in->ops->decide_extra(in->st[s0]) : 0);
            if (len > *L) *L = len;
            if (in->ops->decide_halo_len && in->ops->decide_halo)
                *hl += (size_t)g * in->ops->decide_halo_len(in->st[s0], x);
        }
    }
    return live;
}

/* Halo contributions of every live group, summed over the ranks. */
static void halos(replay_decide *dz, replay *r, int64_t x, size_t hl, int failed, kv_err *err)
{
    size_t off = 0, gi = 0;
    for (size_t i = 0; i < hl; i++) dz->halo[i] = 0;
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *in = &r->inst[mi];
        if (!replay_instance_decides(in)) continue;
        int g = group_size(r, in);
        for (int64_t s0 = 0; s0 < r->S; s0 += g, gi++) {
            if (dz->need[gi] <= 0 || !in->ops->decide_halo_len || !in->ops->decide_halo) continue;
            size_t h = in->ops->decide_halo_len(in->st[s0], x);
            if (!h) continue; /* no room: decide_halo must not write */
            for (int k = 0; k < g; k++, off += h)
                if (!failed) in->ops->decide_halo(in->st[s0 + k], x, dz->halo + off);
        }
    }
    if (kv_mpi_sum_f64(dz->halo, dz->halo, hl, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the eviction halos failed");
}

/* Candidates (cands), or the merged lists applied (apply), of every live
 * group; a failed rank sends padded lists and drops nothing. */
static void walk_groups(replay_decide *dz, replay *r, int64_t x, int L, int apply, int failed, kv_err *err)
{
    size_t gi = 0, li = 0, off = 0;
    for (int mi = 0; mi < r->M; mi++) {
        replay_instance *in = &r->inst[mi];
        if (!replay_instance_decides(in)) continue;
        int g = group_size(r, in), bad = 0;
        double t0 = omp_get_wtime();
        int64_t ngr = r->S / g;
        size_t h = in->ops->decide_halo_len && in->ops->decide_halo ? 1 : 0;
        for (int64_t k = 0; k < ngr; k++, gi++) {
            int64_t s0 = k * g, need = dz->need[gi];
            if (need <= 0) continue;
            kv_evkey *keys = dz->keys + li * (size_t)L;
            const double *halo = NULL;
            if (h) {
                size_t hs = in->ops->decide_halo_len(in->st[s0], x);
                halo = dz->halo + off;
                off += (size_t)g * hs;
            }
            li++;
            if (failed) {
                for (int i = 0; i < L && !apply; i++) keys[i] = KV_EVKEY_NONE;
                continue;
            }
            int rc = apply ? in->ops->decide_apply(in->st + s0, g, x, keys, need)
                           : in->ops->decide_cands(in->st + s0, g, x, halo, L, keys);
            bad |= rc != KV_OK;
        }
        in->t_ingest += omp_get_wtime() - t0;
        if (apply) replay_instance_sample(in, r->S);
        if (bad) kv_seterr(err, KV_EINTERNAL, "method %s: out of memory deciding evictions at %lld", in->spec.label,
                           (long long)x);
    }
}

/* The shape of the decision (identical on every rank: needs come from
 * global counts only, so a mismatch is a bug or a bad checkpoint), the
 * error flags and each deciding method's largest state since the last
 * point, summed over the ranks in one collective: each shape number as v
 * and v^2, equal on all ranks iff sum v^2 = P (sum v / P)^2. */
static int check_shape(replay *r, int64_t x, int64_t L, size_t live, size_t hl, int failed, kv_err *err)
{
    double v[8 + 64], *buf = v;
    int nd = 0;
    for (int mi = 0; mi < r->M; mi++) nd += replay_instance_decides(&r->inst[mi]);
    if (7 + nd > (int)(sizeof v / sizeof *v) && !(buf = malloc(sizeof(double) * (size_t)(7 + nd)))) {
        kv_seterr(err, KV_EINTERNAL, "out of memory for eviction decisions");
        buf = v; /* never in practice (over 64 deciding methods); the counts then differ and MPI fails */
        nd = 0;
        failed = 1;
    }
    double sh[3] = { (double)L, (double)live, (double)hl };
    for (int i = 0; i < 3; i++) buf[2 * i] = sh[i], buf[2 * i + 1] = sh[i] * sh[i];
    buf[6] = failed;
    for (int mi = 0, k = 7; mi < r->M && nd; mi++)
        if (replay_instance_decides(&r->inst[mi])) buf[k++] = (double)r->inst[mi].dsub;
    int bad = kv_mpi_sum_f64(buf, buf, (size_t)(7 + nd), r->comm) != MPI_SUCCESS;
    int mismatch = 0;
    for (int i = 0; i < 3 && !bad; i++) {
        double mean = buf[2 * i] / r->P;
        mismatch |= fabs(buf[2 * i + 1] - r->P * mean * mean) > 0.5;
    }
    for (int mi = 0, k = 7; mi < r->M && nd && !bad; mi++) {
        replay_instance *in = &r->inst[mi];
        if (!replay_instance_decides(in)) continue;
        if ((int64_t)buf[k] > in->dpeak) in->dpeak = (int64_t)buf[k];
        k++;
    }
    int any_failed = !bad && buf[6] > 0;
    if (buf != v) free(buf);
    if (bad) {
        kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the eviction decision shape failed");
        return 0;
    }
    if (any_failed) return 1;
    if (mismatch) {
        kv_seterr(err, KV_EINTERNAL, "ranks disagree on the eviction decisions at position %lld (corrupt checkpoint?)",
                  (long long)x);
        return 1;
    }
    return 0;
}

/* After the point: each deciding method's state since then starts here. */
static void restart_sub(replay *r)
{
    for (int mi = 0; mi < r->M; mi++)
        if (replay_instance_decides(&r->inst[mi])) r->inst[mi].dsub = replay_instance_bytes(&r->inst[mi], r->S);
}

int replay_decide_at(replay_decide *dz, replay *r, int64_t x, int at_query, kv_err *err)
{
    int64_t L = 0;
    size_t hl = 0, live = needs(dz, r, x, at_query, &L, &hl, err);
    if (live && (grow((void **)&dz->keys, &dz->keys_cap, live * (size_t)L, sizeof(kv_evkey)) ||
                 grow((void **)&dz->halo, &dz->halo_cap, hl, sizeof(double))))
        kv_seterr(err, KV_EINTERNAL, "out of memory for eviction decisions");
    int failed = err->code != KV_OK;
    if (check_shape(r, x, L, live, hl, failed, err)) return kv_agree(r->comm, err);
    if (err->code) return KV_OK; /* an MPI failure: agreed at the walk's next agreement */
    if (live) {
        if (hl) halos(dz, r, x, hl, 0, err);
        walk_groups(dz, r, x, (int)L, 0, err->code != KV_OK, err);
        if (kv_evict_allreduce(dz->keys, live, (int)L, r->comm) != MPI_SUCCESS)
            kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the eviction candidates failed");
        else
            walk_groups(dz, r, x, (int)L, 1, err->code != KV_OK, err);
    }
    restart_sub(r);
    return KV_OK;
}
