/* qattn_kivi.c - kivi's record kernel (see qattn_kivi.h): the plan, the
 * tile driver, the checkpoint conversions, and the GCC-vector leaves of
 * builds without AVX-512 (qattn_kivi512.c has those). */
#include <stdlib.h>
#include <string.h>
#include "kernels/attn.h"
#include "kernels/partial.h"
#include "kernels/qattn.h"
#include "kernels/qattn_kivi_leaf.h"

#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v16f __attribute__((vector_size(64)));
typedef int v16i __attribute__((vector_size(64)));

static inline v16f ld16(const float *p) { v16f v; memcpy(&v, p, sizeof v); return v; }
static inline void st16(float *p, v16f v) { memcpy(p, &v, sizeof v); }

int kv_qk_ok(int bits, int G, int dv)
{
    if ((bits != 2 && bits != 4 && bits != 8) || G <= 0 || G % 16 || dv <= 0 || dv % 16) return 0;
    int gv = G < dv ? G : dv, nvg = dv / gv;
    return dv % gv == 0 && (nvg & (nvg - 1)) == 0;
}

void kv_qk_plan_init(kv_qk_plan *p, int bits, int G, int d, int dv)
{
    int P = 32 / bits;
    p->d = d;
    p->dv = dv;
    p->G = G;
    p->bits = bits;
    p->gv = G < dv ? G : dv;
    p->nvg = (dv + p->gv - 1) / p->gv;
    p->nb = (d + P - 1) / P;
    p->kq = p->nb * P;
    p->kcb = 4 * (size_t)G * (size_t)p->nb;
    p->vcb = ((size_t)G * (size_t)dv * (size_t)bits + 7) / 8;
    p->kzs = p->kcb;
    p->vco = p->kcb + 4 * (size_t)d;
    p->vzs = p->vco + p->vcb;
    p->rec = p->vzs + 4 * (size_t)G * (size_t)p->nvg;
}

/* groups per tile: whole groups up to KV_QTILE tokens, else one group in pieces */
static int tile_groups(const kv_qk_plan *p) { return p->G <= KV_QTILE ? KV_QTILE / p->G : 1; }

/* the scratch, carved in this order */
typedef struct {
    float *xq, *ksc, *wk, *S, *a, *acc, *zl, *zsum;
} work;

static size_t carve(const kv_qk_plan *p, int nq, float *w, work *k)
{
    size_t kq = (size_t)kv_qk_pad(p->kq), nvg = (size_t)p->nvg;
    size_t len[8] = { (size_t)nq * kq, kq, 3 * kq, KV_QTILE + 16, KV_QTILE * nvg + 16, (size_t)p->dv, 16 * nvg,
                      nvg + 16 };
    float **dst[8] = { &k->xq, &k->ksc, &k->wk, &k->S, &k->a, &k->acc, &k->zl, &k->zsum };
    size_t at = 0;
    for (int i = 0; i < 8; i++) {
        if (w) *dst[i] = w + at;
        at += len[i];
    }
    return at;
}

size_t kv_qk_scratch_floats(const kv_qk_plan *p, int nq)
{
    work k;
    return carve(p, nq, NULL, &k);
}

/* max, sum of 16 lanes: halves folded onto each other (a tree of fixed
 * shape, 4 levels, in vector registers) */
typedef float v8h __attribute__((vector_size(32)));
typedef float v4h __attribute__((vector_size(16)));
typedef int v8hi __attribute__((vector_size(32)));
typedef int v4hi __attribute__((vector_size(16)));

static inline v8h max8(v8h a, v8h b) { v8hi g = a > b; return (v8h)(((v8hi)a & g) | ((v8hi)b & ~g)); }
static inline v4h max4(v4h a, v4h b) { v4hi g = a > b; return (v4h)(((v4hi)a & g) | ((v4hi)b & ~g)); }

static float lanes_max(v16f v)
{
    v8h h[2];
    v4h q[2];
    memcpy(h, &v, sizeof h);
    v8h a = max8(h[0], h[1]);
    memcpy(q, &a, sizeof q);
    v4h b = max4(q[0], q[1]);
    float x = b[0] > b[2] ? b[0] : b[2], y = b[1] > b[3] ? b[1] : b[3];
    return x > y ? x : y;
}

static float lanes_sum(v16f v)
{
    v8h h[2];
    v4h q[2];
    memcpy(h, &v, sizeof h);
    v8h a = h[0] + h[1];
    memcpy(q, &a, sizeof q);
    v4h b = q[0] + q[1];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

/* The max-shifted softmax of a tile's logits s (nt, a multiple of 16)
 * into the double state r: s becomes the weights, l and l2 summed by
 * lanes in a fixed order (the max is exact in any order). */
static void softmax_tile(double *r, float *s, int nt, int dv)
{
    v16f m = ld16(s);
    for (int t = 16; t < nt; t += 16) {
        v16f x = ld16(s + t);
        v16i gt = x > m;
        m = (v16f)(((v16i)x & gt) | ((v16i)m & ~gt));
    }
    float mm = kv_partial_raise_max(r, lanes_max(m), dv);
    for (int t = 0; t < nt; t += 16) st16(s + t, ld16(s + t) - mm);
    kv_expf_neg(s, (size_t)nt);
    v16f l = { 0 }, l2 = { 0 };
    for (int t = 0; t < nt; t += 16) {
        v16f x = ld16(s + t);
        l += x;
        l2 += x * x;
    }
    r[KV_PS_L] += lanes_sum(l);
    r[KV_PS_L2] += lanes_sum(l2);
}

/* One tile for every query: the logits (the key scales folded in per
 * group), the softmax, the value sums, and their fold into the double
 * state. */
static void fold_tile(const kv_qk_plan *p, kv_qk_tile *tl, int nq, double *st, const work *k)
{
    int kq = kv_qk_pad(p->kq), nvg = p->nvg, dv = p->dv, gv = p->gv;
    kv_qk_pf *pf = tl->pf;
    for (int q = 0; q < nq; q++) {
        double *r = st + (size_t)q * KV_PSTATE_LEN(dv), *u = r + KV_PS_U;
        tl->pf = q == 0 ? pf : NULL; /* the first query's loops prefetch the next tile */
        kv_qk_keys(p, tl, k->xq + (size_t)q * kq, k->ksc, k->wk, k->S);
        softmax_tile(r, k->S, tl->nt, dv);
        kv_qk_prefetch(tl->pf);
        kv_qk_weights(p, tl, k->S, k->a, k->zl, k->zsum);
        memset(k->acc, 0, sizeof(float) * (size_t)dv);
        kv_qk_values(p, tl, k->a, k->acc);
        kv_qk_prefetch_rest(tl->pf);
        for (int j = 0; j < nvg; j++) {
            double zj = k->zsum[j];
            for (int c = j * gv; c < (j + 1) * gv; c++) u[c] += (double)k->acc[c] + zj;
        }
    }
    tl->pf = pf;
}

void kv_qk_fold(const kv_qk_plan *p, const uint8_t *recs, int64_t g0, int64_t g1, int64_t gend, const float *qp, int nq,
                double *st, float *w)
{
    int d = p->d, kq = kv_qk_pad(p->kq), tg = tile_groups(p), G = p->G;
    work k;
    carve(p, nq, w, &k);
    for (int q = 0; q < nq; q++) { /* the queries padded to whole vectors: codes past d are 0 */
        memcpy(k.xq + (size_t)q * kq, qp + (size_t)q * d, sizeof(float) * (size_t)d);
        memset(k.xq + (size_t)q * kq + d, 0, sizeof(float) * (size_t)(kq - d));
    }
    for (int c = 0; c < kq; c++) k.ksc[c] = kv_qk_kscale(p->bits, c);
    kv_qk_tile tl;
    kv_qk_pf pf;
    for (int64_t g = g0; g < g1; g += tg) {
        int ngt = g1 - g < tg ? (int)(g1 - g) : tg;
        const uint8_t *r = recs + (size_t)g * p->rec;
        int64_t gn = gend - (g + ngt) < tg ? gend - (g + ngt) : tg; /* the next tile's groups (past g1 too) */
        pf.p = r + (size_t)ngt * p->rec;
        pf.n = G <= KV_QTILE ? (size_t)gn * p->rec : 0;
        pf.at = 0;
        pf.step = (pf.n / 64 / (kv_qk_pf_calls(p) + 1) + 1) * 64;
        tl.pf = &pf;
        if (G <= KV_QTILE) {
            tl.ns = ngt;
            tl.nt = ngt * G;
            for (int x = 0; x < ngt; x++) {
                tl.r[x] = r + (size_t)x * p->rec;
                tl.t0[x] = 0;
                tl.n[x] = G;
            }
            fold_tile(p, &tl, nq, st, &k);
        } else
            for (int t0 = 0; t0 < G; t0 += KV_QTILE) {
                tl.ns = 1;
                tl.nt = tl.n[0] = G - t0 < KV_QTILE ? G - t0 : KV_QTILE;
                tl.r[0] = r;
                tl.t0[0] = t0;
                fold_tile(p, &tl, nq, st, &k);
            }
    }
}

/* b-bit code i of a packed array (kv_quantise's little-endian packing) */
static unsigned code_get(const uint8_t *c, int bits, size_t i)
{
    size_t bit = i * (size_t)bits;
    return (c[bit >> 3] >> (bit & 7)) & ((1u << bits) - 1);
}

static void code_put(uint8_t *c, int bits, size_t i, unsigned v)
{
    size_t bit = i * (size_t)bits;
    c[bit >> 3] = (uint8_t)(c[bit >> 3] | v << (bit & 7));
}

/* a record's value codes between the channel words and token-major rows */
static void vcodes_to_rows(const kv_qk_plan *p, const uint8_t *words, uint8_t *rows)
{
    memset(rows, 0, p->vcb);
    for (int t = 0; t < p->G; t++)
        for (int c = 0; c < p->dv; c++)
            code_put(rows, p->bits, (size_t)t * p->dv + c, code_get(words, p->bits, kv_qk_vpos(p, t, c)));
}

static void vcodes_from_rows(const kv_qk_plan *p, const uint8_t *rows, uint8_t *words)
{
    memset(words, 0, p->vcb);
    for (int t = 0; t < p->G; t++)
        for (int c = 0; c < p->dv; c++)
            code_put(words, p->bits, kv_qk_vpos(p, t, c), code_get(rows, p->bits, (size_t)t * p->dv + c));
}

void kv_qk_put_records(const kv_qk_plan *p, const uint8_t *recs, size_t n, kv_buf *b)
{
    uint8_t *r = n ? malloc(p->rec) : NULL;
    if (n && !r) {
        b->failed = 1;
        return;
    }
    kv_buf_put_i64(b, (int64_t)(p->rec * n)); /* kv_buf_put_arr's length, then the bytes */
    for (size_t g = 0; g < n; g++) {
        const uint8_t *x = recs + g * p->rec;
        memcpy(r, x, p->rec);
        vcodes_to_rows(p, x + p->vco, r + p->vco);
        kv_buf_put(b, r, p->rec);
    }
    free(r);
}

int kv_qk_records_in(const kv_qk_plan *p, uint8_t *recs, size_t n)
{
    uint8_t *v = n ? malloc(p->vcb) : NULL;
    if (n && !v) return -1;
    for (size_t g = 0; g < n; g++) {
        uint8_t *x = recs + g * p->rec + p->vco;
        memcpy(v, x, p->vcb);
        vcodes_from_rows(p, v, x);
    }
    free(v);
    return 0;
}

#if !defined(__AVX512F__)
/* The leaves without AVX-512: keys by qattn.c's word kernel, values a
 * channel per lane of 8, each code shifted down, converted, multiplied. */
typedef float v8f __attribute__((vector_size(32)));
typedef int v8i __attribute__((vector_size(32)));
typedef unsigned v8u __attribute__((vector_size(32)));

float kv_qk_kscale(int bits, int c) { return kv_qword_scale(bits, c % (32 / bits)); }

size_t kv_qk_pf_calls(const kv_qk_plan *p) { return KV_QTILE / 32 + (size_t)(p->dv + 31) / 32; }

void kv_qk_keys(const kv_qk_plan *p, const kv_qk_tile *tl, const float *x, const float *ksc, float *wk, float *S)
{
    int d = p->d, kq = kv_qk_pad(p->kq);
    float *qs = wk, *kz = wk + kq, *ks = wk + 2 * kq;
    for (int i = 0, off = 0; i < tl->ns; off += tl->n[i], i++) {
        kv_qhalves(tl->r[i] + p->kzs, d, kz, ks);
        for (int c = 0; c < d; c++) qs[c] = x[c] * ks[c] * ksc[c];
        for (int c = d; c < p->kq; c++) qs[c] = 0;
        kv_qlogits_words(qs, kv_qdot(x, kz, d), tl->r[i] + 4 * (size_t)tl->t0[i], p->G, p->nb, p->bits, tl->n[i],
                         S + off);
        for (int t = 0; t < tl->n[i]; t += 32) kv_qk_prefetch(tl->pf);
    }
}

void kv_qk_weights(const kv_qk_plan *p, const kv_qk_tile *tl, const float *w, float *a, float *zl, float *zsum)
{
    (void)zl;
    int nvg = p->nvg;
    for (int j = 0; j < nvg; j++) zsum[j] = 0;
    for (int i = 0, t = 0; i < tl->ns; i++)
        for (int x = 0; x < tl->n[i]; x++, t++)
            for (int j = 0; j < nvg; j++) {
                float z, s;
                kv_qhalves(tl->r[i] + p->vzs + 4 * ((size_t)(tl->t0[i] + x) * nvg + j), 1, &z, &s);
                a[t * nvg + j] = w[t] * s;
                zsum[j] += w[t] * z;
            }
}

void kv_qk_values(const kv_qk_plan *p, const kv_qk_tile *tl, const float *a, float *acc)
{
    int dv = p->dv, nvg = p->nvg, b = p->bits, B = 32 / b, mask = (1 << b) - 1;
    for (int c0 = 0; c0 < dv; c0 += 8) {
        const float *ab = a + c0 / p->gv;
        if (c0 % 32 == 0) kv_qk_prefetch(tl->pf);
        v8f s;
        memcpy(&s, acc + c0, sizeof s);
        for (int i = 0; i < tl->ns; i++) {
            const uint8_t *vc = tl->r[i] + p->vco + (size_t)(tl->t0[i] / B) * 4 * dv;
            for (int blk = 0; blk < tl->n[i] / B; blk++, ab += B * nvg) {
                v8u w;
                memcpy(&w, vc + 4 * ((size_t)blk * dv + c0), sizeof w);
                for (int k = 0; k < B; k++) s += __builtin_convertvector((v8i)(w >> (k * b)) & mask, v8f) * ab[k * nvg];
            }
        }
        memcpy(acc + c0, &s, sizeof s);
    }
}
#endif
