/* jobfloors.c - the floors over the ranks (see jobfloors.h). */
#include "mpi/coll.h"
#include "mpi/jobfloors.h"

int kv_floors_measure_all(kv_floors *f, MPI_Comm comm, kv_err *err)
{
    *f = (kv_floors){ 0, 0, 0 };
    if (kv_mpi_barrier(comm) != MPI_SUCCESS) kv_seterr(err, KV_EINTERNAL, "MPI_Barrier before the floors failed");
    if (!err->code) kv_floors_measure(f, err);
    /* a failed rank sends +inf so the others' figures stand; its error is agreed by the caller */
    double neg[2] = { err->code ? -1e300 : -f->read_bw, err->code ? -1e300 : -f->fma_peak }, mx[2];
    if (kv_mpi_max_f64(neg, mx, 2, comm) != MPI_SUCCESS)
        return kv_seterr(err, KV_EINTERNAL, "MPI_Allreduce of the floors failed");
    f->read_bw = -mx[0];
    f->fma_peak = -mx[1];
    return err->code;
}
