/* balancekv_walk.c - BalanceKV's self-balancing walk over one halving's
 * block (ALGORITHMS.md section 4d; balancekv.c's header has the method).
 *
 * Row i is x_i = phi(k_i) (+) phi(k_i) (x) v_i, <x_i, x_j> =
 * exp(scale <k_i, k_j>) (1 + <v_i, v_j>), normalised by the largest
 * |x_i|^2 = exp(scale |k_i|^2)(1 + |v_i|^2).  With w = sum_{j<i} eps_j x_j,
 * eps_i = +1 with probability (1 - <w, x_i> / c') / 2 clamped to [0, 1],
 * c' = c times the block's mean |x_i|^2, the coin kv_hash_uniform(tag,
 * halving, i, 0).
 *
 * Arithmetic (a meaning change from the double products before, section
 * 4d): the keys and values are transposed into blocks of 16 rows, and the
 * products of WB walk rows with CB columns at a time are float sums over
 * the coordinates in order (one FMA chain per pair), the kernel's exp is
 * kv_expf_neg (float, relative error <= 1e-7, 0 below e^-87: nothing next
 * to the threshold, which is at least c / n), and the product
 * p = e (1 + vv) is float.  The signed sum <w, x_i> over the rows walked
 * before the block of WB (j < i0) is summed in double per 8-lane column
 * group as the products come (unwalked rows have sign 0, which adds
 * exactly 0), its 8 lanes added in order, then the block's own earlier
 * rows one at a time.  The order is fixed by the code alone: the same bits
 * for a seed, at any thread count and in any build with the same vector
 * width (builds differ in WB and CB, hence in the order of the double sum). */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "core/rng.h"
#include "kernels/attn.h"
#include "methods/balancekv_walk.h"

#if defined(__AVX512F__)
#define WB 8  /* walk rows whose products are computed together */
#define NVB 3 /* 16-column groups per column block: 8 x 3 zmm accumulators */
#else
#define WB 4  /* AVX2: 4 x 2 ymm accumulators */
#define NVB 1
#endif
#define CB (16 * NVB) /* columns per block, a multiple of WB: a row block's own rows lie in one */
_Static_assert(CB % WB == 0, "a walk block within one column block");

typedef float v16f __attribute__((vector_size(16 * sizeof(float))));
typedef double v8d __attribute__((vector_size(8 * sizeof(double))));

typedef struct {
    const kv_bkv_block *blk;
    float *Kt, *Vt; /* keys, values in blocks of 16 rows: (jb dim + c) 16 + lane, zero past row n */
    float *sf;      /* signs as floats, 0 until walked (padded to whole column blocks) */
    float scale, lognorm;
} walk_ws;

static inline v16f ld16(const float *p)
{
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* acc[u][w] = <x_u, row j0 + 16 w + lane> over dim coordinates in order,
 * X transposed in 16-row blocks from block jb. */
static inline __attribute__((always_inline)) void block_dots(const float *const *xi, const float *Xt, int64_t jb,
                                                             int dim, v16f acc[WB][NVB])
{
    for (int u = 0; u < WB; u++)
        for (int w = 0; w < NVB; w++) acc[u][w] = (v16f){ 0 };
    const float *xt = Xt + (size_t)jb * (size_t)dim * 16;
    for (int c = 0; c < dim; c++) {
        v16f y[NVB];
        for (int w = 0; w < NVB; w++) y[w] = ld16(xt + ((size_t)w * (size_t)dim + (size_t)c) * 16);
        for (int u = 0; u < WB; u++) {
            float x = xi[u][c];
            for (int w = 0; w < NVB; w++) acc[u][w] += x * y[w];
        }
    }
}

/* Products of rows i0 .. i0 + nu - 1 with every column j < jn = i0 + nu - 1
 * (whole blocks of CB): P[u CB + t] = the last block's products (it holds
 * the block's own earlier rows), and dot[u] = sum_{j < i0} eps_j p_uj. */
static void walk_block(const walk_ws *ws, int64_t i0, int nu, float *P, double *dot)
{
    const kv_bkv_block *b = ws->blk;
    size_t d = (size_t)b->d, dv = (size_t)b->dv;
    const float *ki[WB], *vi[WB];
    for (int u = 0; u < WB; u++) { /* padded with the last row */
        int64_t i = i0 + (u < nu ? u : nu - 1);
        ki[u] = b->K + (size_t)i * d;
        vi[u] = b->V + (size_t)i * dv;
    }
    v8d s[WB];
    for (int u = 0; u < WB; u++) s[u] = (v8d){ 0 };
    int64_t jn = i0 + nu - 1;
    for (int64_t j0 = 0; j0 < jn; j0 += CB) {
        v16f acc[WB][NVB];
        block_dots(ki, ws->Kt, j0 / 16, b->d, acc);
        for (int u = 0; u < WB; u++)
            for (int w = 0; w < NVB; w++) {
                v16f a = acc[u][w] * ws->scale - ws->lognorm;
                memcpy(P + u * CB + w * 16, &a, sizeof a);
            }
        kv_expf_neg(P, WB * CB);
        block_dots(vi, ws->Vt, j0 / 16, b->dv, acc);
        for (int u = 0; u < WB; u++)
            for (int w = 0; w < NVB; w++) {
                v16f p = ld16(P + u * CB + w * 16) * (acc[u][w] + 1.0f);
                memcpy(P + u * CB + w * 16, &p, sizeof p);
                v16f t = ld16(ws->sf + j0 + w * 16) * p; /* exact: eps in {-1, 0, 1} */
                v8d lo = { t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7] };
                v8d hi = { t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15] };
                s[u] += lo;
                s[u] += hi;
            }
    }
    for (int u = 0; u < nu; u++) {
        double r = 0;
        for (int l = 0; l < 8; l++) r += s[u][l];
        dot[u] = r;
    }
}

/* lognorm = max log|x_i|^2, returned; *msq = sum |x_i|^2 / max */
static double norms(const kv_bkv_block *b, double *msq)
{
    size_t d = (size_t)b->d, dv = (size_t)b->dv;
    double lmax = -INFINITY, m = 0;
    for (int pass = 0; pass < 2; pass++) /* the maximum, then the mean (no scratch row) */
        for (int64_t i = 0; i < b->n; i++) {
            double x = 0, y = 0;
            for (size_t c = 0; c < d; c++) x += (double)b->K[i * d + c] * b->K[i * d + c];
            for (size_t c = 0; c < dv; c++) y += (double)b->V[i * dv + c] * b->V[i * dv + c];
            double l = b->scale * x + log1p(y);
            if (pass) m += exp(l - lmax);
            else lmax = l > lmax ? l : lmax;
        }
    *msq = m;
    return lmax;
}

/* X (n x dim) into 16-row blocks, zero past row n */
static void transpose16(const float *X, int64_t n, int dim, float *Xt)
{
    for (int64_t j = 0; j < n; j++)
        for (int c = 0; c < dim; c++)
            Xt[((size_t)(j / 16) * (size_t)dim + (size_t)c) * 16 + (size_t)(j % 16)] = X[(size_t)j * (size_t)dim + (size_t)c];
}

int64_t kv_bkv_walk(const kv_bkv_block *blk, int8_t *sign)
{
    int64_t n = blk->n;
    if (n <= 0) return 0;
    double msq, lognorm = norms(blk, &msq), cthr = blk->c * msq / (double)n;
    size_t np = (size_t)((n + CB - 1) / CB * CB);
    float *buf = calloc(np * (size_t)(blk->d + blk->dv + 1), sizeof(float));
    if (!buf) return -1;
    walk_ws ws = { blk, buf, buf + np * (size_t)blk->d, buf + np * (size_t)(blk->d + blk->dv), (float)blk->scale,
                   (float)lognorm };
    transpose16(blk->K, n, blk->d, ws.Kt);
    transpose16(blk->V, n, blk->dv, ws.Vt);
    float P[WB * CB];
    double dot[WB];
    int64_t plus = 0;
    for (int64_t i0 = 0; i0 < n; i0 += WB) {
        int nu = n - i0 < WB ? (int)(n - i0) : WB;
        walk_block(&ws, i0, nu, P, dot);
        int64_t jl = (i0 + nu - 2) / CB * CB; /* the last column block's first row (nu >= 2) */
        for (int u = 0; u < nu; u++) { /* row i's sign needs those of rows < i */
            int64_t i = i0 + u;
            double x = dot[u];
            for (int64_t j = i0; j < i; j++) x += (double)(ws.sf[j] * P[u * CB + (j - jl)]);
            double pr = 0.5 * (1.0 - x / cthr);
            pr = pr < 0 ? 0 : pr > 1 ? 1 : pr;
            sign[i] = kv_hash_uniform(blk->tag, blk->halving, (uint64_t)i, 0) < pr ? 1 : -1;
            ws.sf[i] = (float)sign[i];
            plus += sign[i] > 0;
        }
    }
    free(buf);
    return plus;
}
