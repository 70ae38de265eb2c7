/* topk_merge.h - merge two candidate lists of a global top-L selection.
 *
 * A list is L doubles sorted descending, padded with -inf.  Merging keeps
 * the L largest of the union (with multiplicity), so merging the ranks'
 * lists in any order and grouping gives the same list: the MPI reduction
 * behind global top-k (mpi/, method.h: select) is exact and deterministic. */
#ifndef KVSTREAM_TOPK_MERGE_H
#define KVSTREAM_TOPK_MERGE_H

/* inout <- the L largest of inout and in (both sorted descending). */
void kv_topk_merge(double *inout, const double *in, int L);

#endif
