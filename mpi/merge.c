/* merge.c - user-defined MPI reduction over partial attention states. */
#include <limits.h>
#include <math.h>
#include "mpi/merge.h"
#include "kernels/partial.h"
#include "kernels/evict.h"
#include "kernels/topk_merge.h"

static void merge_fn(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    int bytes;
    MPI_Type_size(*dt, &bytes);
    int dv = bytes / (int)sizeof(double) - 3; /* the datatype carries dv */
    size_t sl = KV_PSTATE_LEN(dv);
    const double *a = in;
    double *b = inout;
    /* MPI defines inout = in (op) inout; in comes from lower ranks */
    for (int i = 0; i < *len; i++) {
        double tmp[sl];
        for (size_t k = 0; k < sl; k++) tmp[k] = a[i * sl + k];
        kv_partial_merge(tmp, b + i * sl, dv);
        for (size_t k = 0; k < sl; k++) b[i * sl + k] = tmp[k];
    }
}

int kv_merge_init(kv_merge *mg, int dv)
{
    mg->dv = dv;
    int rc = MPI_Type_contiguous((int)KV_PSTATE_LEN(dv), MPI_DOUBLE, &mg->type);
    if (rc == MPI_SUCCESS) rc = MPI_Type_commit(&mg->type);
    if (rc == MPI_SUCCESS) rc = MPI_Op_create(merge_fn, 0 /* non-commutative: rank order */, &mg->op);
    return rc;
}

void kv_merge_free(kv_merge *mg)
{
    MPI_Op_free(&mg->op);
    MPI_Type_free(&mg->type);
}

int kv_merge_reduce(const kv_merge *mg, const double *send, double *recv, size_t count, int root, MPI_Comm comm)
{
    size_t sl = KV_PSTATE_LEN(mg->dv), step = (size_t)INT_MAX / sl;
    for (size_t off = 0; off < count; off += step) {
        int n = (int)(count - off < step ? count - off : step);
        int rank;
        MPI_Comm_rank(comm, &rank);
        int rc = MPI_Reduce(send + off * sl, rank == root ? recv + off * sl : NULL, n, mg->type, mg->op, root, comm);
        if (rc != MPI_SUCCESS) return rc;
    }
    return MPI_SUCCESS;
}

/* (m, l) pairs: inout = in (op) inout, in from lower ranks */
static void ml_fn(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    const double *a = in;
    double *b = inout;
    for (int i = 0; i < *len; i++) {
        double ma = a[2 * i], mb = b[2 * i], m = ma > mb ? ma : mb;
        /* both empty: stay empty (e^(-inf - -inf) would be NaN) */
        b[2 * i + 1] = m == -INFINITY ? 0.0 : a[2 * i + 1] * exp(ma - m) + b[2 * i + 1] * exp(mb - m);
        b[2 * i] = m;
    }
}

static void topk_fn(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    int bytes;
    MPI_Type_size(*dt, &bytes);
    int L = bytes / (int)sizeof(double); /* the datatype carries L */
    for (int i = 0; i < *len; i++)
        kv_topk_merge((double *)inout + (size_t)i * L, (const double *)in + (size_t)i * L, L);
}

static void evict_fn(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    int bytes;
    MPI_Type_size(*dt, &bytes);
    int L = bytes / (int)sizeof(kv_evkey); /* the datatype carries L */
    for (int i = 0; i < *len; i++)
        kv_evict_merge((kv_evkey *)inout + (size_t)i * L, (const kv_evkey *)in + (size_t)i * L, L);
}

/* count elements of `len` doubles each, in slices (MPI counts are int) */
static int allreduce_user(double *buf, size_t count, int len, MPI_User_function *fn, MPI_Comm comm)
{
    MPI_Datatype type;
    MPI_Op op;
    int rc = MPI_Type_contiguous(len, MPI_DOUBLE, &type);
    if (rc != MPI_SUCCESS) return rc;
    if ((rc = MPI_Type_commit(&type)) == MPI_SUCCESS && (rc = MPI_Op_create(fn, 0, &op)) == MPI_SUCCESS) {
        size_t step = (size_t)INT_MAX / (size_t)len;
        for (size_t off = 0; off < count && rc == MPI_SUCCESS; off += step) {
            int n = (int)(count - off < step ? count - off : step);
            rc = MPI_Allreduce(MPI_IN_PLACE, buf + off * (size_t)len, n, type, op, comm);
        }
        MPI_Op_free(&op);
    }
    MPI_Type_free(&type);
    return rc;
}

int kv_ml_allreduce(double *ml, size_t n, MPI_Comm comm) { return allreduce_user(ml, n, 2, ml_fn, comm); }

int kv_topk_allreduce(double *lists, size_t count, int L, MPI_Comm comm)
{
    return allreduce_user(lists, count, L, topk_fn, comm);
}

int kv_evict_allreduce(kv_evkey *lists, size_t count, int L, MPI_Comm comm)
{
    return allreduce_user((double *)lists, count, 2 * L, evict_fn, comm);
}
