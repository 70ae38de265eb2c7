/* agree.h - make every rank agree on the first error.
 *
 * Input problems are often seen by one rank only (a corrupt chunk in its
 * shard).  kv_agree is a collective every rank calls at the same points:
 * afterwards all ranks hold the same error (the one of the lowest failing
 * rank, with "(rank r)" appended when the job has more than one rank), so
 * all of them leave together with the same status and nobody hangs in a
 * later collective. */
#ifndef KVSTREAM_AGREE_H
#define KVSTREAM_AGREE_H

#include <mpi.h>
#include "core/kverr.h"

/* Returns the agreed error code (KV_OK if no rank failed). */
int kv_agree(MPI_Comm comm, kv_err *err);

#endif
