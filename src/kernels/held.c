/* held.c - attention over held rows with fixed-order logits (held.h). */
#include <math.h>
#include <stdlib.h>
#include "core/kverr.h"
#include "kernels/held.h"
#include "kernels/partial.h"

int kv_attn_held(const float *Q, int nq, const float *K, const float *V, size_t n, int d, int dv, double scale,
                 double *st)
{
    size_t sl = KV_PSTATE_LEN(dv);
    for (int q = 0; q < nq; q++) kv_partial_clear(st + q * sl, dv);
    if (!n || nq <= 0) return KV_OK;
    double *w = malloc(sizeof(double) * n);
    if (!w) return KV_EINTERNAL;
    for (int q = 0; q < nq; q++) {
        const float *qq = Q + (size_t)q * d;
        double m = -INFINITY, l = 0, l2 = 0, *x = st + q * sl;
        for (size_t t = 0; t < n; t++) {
            w[t] = kv_held_logit(qq, K + t * (size_t)d, d, scale);
            m = w[t] > m ? w[t] : m;
        }
        for (size_t t = 0; t < n; t++) {
            double e = exp(w[t] - m);
            const float *v = V + t * dv;
            l += e;
            l2 += e * e;
            for (int c = 0; c < dv; c++) x[KV_PS_U + c] += e * v[c];
        }
        x[KV_PS_M] = m;
        x[KV_PS_L] = l;
        x[KV_PS_L2] = l2;
    }
    free(w);
    return KV_OK;
}
