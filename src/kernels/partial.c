/* partial.c - partial attention states: clear, fold, merge, output. */
#include <math.h>
#include <string.h>
#include "kernels/partial.h"

void kv_partial_clear(double *st, int dv)
{
    st[KV_PS_M] = -INFINITY;
    st[KV_PS_L] = 0.0;
    st[KV_PS_L2] = 0.0;
    memset(st + KV_PS_U, 0, (size_t)dv * sizeof(double));
}

void kv_partial_merge(double *dst, const double *src, int dv)
{
    double m1 = dst[KV_PS_M], m2 = src[KV_PS_M];
    if (src[KV_PS_L] == 0.0 && src[KV_PS_M] == -INFINITY) return; /* src empty */
    if (dst[KV_PS_L] == 0.0 && dst[KV_PS_M] == -INFINITY) {        /* dst empty */
        memcpy(dst, src, KV_PSTATE_LEN(dv) * sizeof(double));
        return;
    }
    double m = m1 > m2 ? m1 : m2;
    /* exponents are <= 0, so neither factor can overflow */
    double f1 = exp(m1 - m), f2 = exp(m2 - m);
    dst[KV_PS_M] = m;
    dst[KV_PS_L] = dst[KV_PS_L] * f1 + src[KV_PS_L] * f2;
    dst[KV_PS_L2] = dst[KV_PS_L2] * f1 * f1 + src[KV_PS_L2] * f2 * f2;
    double *u = dst + KV_PS_U;
    const double *v = src + KV_PS_U;
    for (int c = 0; c < dv; c++) u[c] = u[c] * f1 + v[c] * f2;
}

static void rescale(double *st, int dv, double m_new)
{
    double f = exp(st[KV_PS_M] - m_new);
    st[KV_PS_L] *= f;
    st[KV_PS_L2] *= f * f;
    for (int c = 0; c < dv; c++) st[KV_PS_U + c] *= f;
    st[KV_PS_M] = m_new;
}

void kv_partial_add(double *st, int dv, const float *a, const float *w,
                    const float *V, size_t n)
{
    if (n == 0) return;
    double bm = -INFINITY;
    for (size_t i = 0; i < n; i++) bm = a[i] > bm ? a[i] : bm;
    if (bm > st[KV_PS_M]) {
        if (st[KV_PS_M] == -INFINITY) st[KV_PS_M] = bm;
        else rescale(st, dv, bm);
    }
    double m = st[KV_PS_M], l = 0, l2 = 0;
    double *u = st + KV_PS_U;
    for (size_t i = 0; i < n; i++) {
        double e = exp((double)a[i] - m);
        double we = w ? (double)w[i] * e : e;
        l += we;
        l2 += (w ? (double)w[i] : 1.0) * e * e;
        const float *v = V + i * (size_t)dv;
        for (int c = 0; c < dv; c++) u[c] += we * v[c];
    }
    st[KV_PS_L] += l;
    st[KV_PS_L2] += l2;
}

void kv_partial_add_one(double *st, int dv, double a, double w, const float *v)
{
    if (a > st[KV_PS_M]) {
        if (st[KV_PS_M] == -INFINITY) st[KV_PS_M] = a;
        else rescale(st, dv, a);
    }
    double e = exp(a - st[KV_PS_M]);
    st[KV_PS_L] += w * e;
    st[KV_PS_L2] += w * e * e;
    for (int c = 0; c < dv; c++) st[KV_PS_U + c] += w * e * v[c];
}

int kv_partial_output(const double *st, int dv, double *z)
{
    double l = st[KV_PS_L];
    if (!(l > 0.0)) {
        memset(z, 0, (size_t)dv * sizeof(double));
        return -1;
    }
    for (int c = 0; c < dv; c++) z[c] = st[KV_PS_U + c] / l;
    return 0;
}
