/* cost.c - per-query read bytes, read tokens and flops (see cost.h). */
#include <stdio.h>
#include "mpi/agree.h"
#include "mpi/coll.h"
#include "mpi/jobfloors.h"
#include "replay/cost.h"

kv_query_cost replay_cost_derived(const kv_method_ops *ops, const void *st, int d, int dv)
{
    kv_method_extra e = { -1, -1, 0 };
    if (ops->extra) ops->extra(st, &e);
    double kept = e.kept_tokens > 0 ? (double)e.kept_tokens : 0.0;
    return (kv_query_cost){ (double)ops->bytes(st), kept, 2.0 * (double)(d + dv) * kept };
}

void replay_cost_begin(const replay_instance *x, int64_t s, kv_query_cost *c)
{
    *c = (kv_query_cost){ 0, 0, 0 };
    if (x->ops->cost) x->ops->cost(x->st[s], c);
}

void replay_cost_end(const replay *r, const replay_instance *x, int64_t s, const kv_query_cost *c0, int64_t g,
                     int derive, double *slot)
{
    if (g <= 0) return;
    double per[REPLAY_COST_LEN];
    if (x->ops->cost) {
        kv_query_cost c1;
        x->ops->cost(x->st[s], &c1);
        per[REPLAY_COST_BYTES] = (c1.read_bytes - c0->read_bytes) / (double)g;
        per[REPLAY_COST_TOKENS] = (c1.read_tokens - c0->read_tokens) / (double)g;
        per[REPLAY_COST_FLOPS] = (c1.flops - c0->flops) / (double)g;
    } else if (derive) {
        kv_query_cost c = replay_cost_derived(x->ops, x->st[s], (int)r->d, (int)r->dv);
        per[REPLAY_COST_BYTES] = c.read_bytes;
        per[REPLAY_COST_TOKENS] = c.read_tokens;
        per[REPLAY_COST_FLOPS] = c.flops;
    } else {
        return;
    }
    for (int64_t q = 0; q < g; q++)
        for (int k = 0; k < REPLAY_COST_LEN; k++) slot[q * REPLAY_COST_LEN + k] += per[k];
}

int replay_floors_setup(replay *r, kv_err *err)
{
    const char *path = r->o->floors;
    r->fl = (kv_floors){ 0, 0, 0 };
    /* only rank 0 prints the table: its word decides, on every rank */
    int want = r->o->table || r->o->out;
    if (kv_mpi_bcast(&want, sizeof want, 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Bcast of the floors failed");
    if (kv_agree(r->comm, err) || !want) return err->code;
    int have = 0; /* the file exists: rank 0 reads it */
    if (path && r->rank == 0) {
        FILE *f = fopen(path, "r");
        have = f != NULL;
        if (f) fclose(f);
        if (have) kv_floors_read(path, &r->fl, err);
    }
    if (kv_mpi_bcast(&have, sizeof have, 0, r->comm) != MPI_SUCCESS)
        kv_seterr(err, KV_EINTERNAL, "MPI_Bcast of the floors failed");
    if (kv_agree(r->comm, err)) return err->code;
    if (have) {
        if (kv_mpi_bcast(&r->fl, sizeof r->fl, 0, r->comm) != MPI_SUCCESS)
            kv_seterr(err, KV_EINTERNAL, "MPI_Bcast of the floors failed");
        return kv_agree(r->comm, err);
    }
    kv_floors_measure_all(&r->fl, r->comm, err);
    if (!err->code && path && r->rank == 0) kv_floors_write(path, &r->fl, err);
    return kv_agree(r->comm, err);
}
