/* jobfloors.h - the machine's floors (kernels/floors.h) over the ranks of a job. */
#ifndef KVSTREAM_MPI_JOBFLOORS_H
#define KVSTREAM_MPI_JOBFLOORS_H

#include <mpi.h>
#include "core/kverr.h"
#include "kernels/floors.h"

/* Collective: every rank measures at once (after a barrier), each with its
 * OpenMP threads, and f gets the minimum of each figure over the ranks: the
 * slowest rank sets a query's time, and ranks sharing a node share its
 * memory bus, which probing them together sees.  A rank's error is left in
 * err for the caller to agree. */
int kv_floors_measure_all(kv_floors *f, MPI_Comm comm, kv_err *err);

#endif
