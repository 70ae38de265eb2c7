/* topk_merge.c - see topk_merge.h */
#include "kernels/topk_merge.h"

void kv_topk_merge(double *inout, const double *in, int L)
{
    /* how many of the L largest come from each list (ties to inout) ... */
    int i = 0, j = 0;
    while (i + j < L) {
        if (inout[i] >= in[j]) i++;
        else j++;
    }
    /* ... then merge from the back, in place: the write position o stays
     * >= i - 1, so no unread element of inout is overwritten (no scratch:
     * L may be large, and an MPI reduction op cannot report a failure) */
    for (int o = L - 1; o >= 0; o--) {
        if (j == 0 || (i > 0 && inout[i - 1] < in[j - 1])) inout[o] = inout[--i];
        else inout[o] = in[--j];
    }
}
