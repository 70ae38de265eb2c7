/* store.c - quantised rows of the evicting methods (store.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "kernels/partial.h"
#include "methods/common/quant.h"
#include "methods/common/store.h"

static void kind_bits(int which, int *kind, int *bits)
{
    static const int K[] = { KV_STORE_F32, KV_STORE_F16, KV_STORE_KIVI, KV_STORE_KIVI, KV_STORE_KIVI,
                             KV_STORE_TQ, KV_STORE_TQ, KV_STORE_TQ };
    static const int B[] = { 32, 16, 2, 4, 8, 2, 3, 4 };
    if (which < 0 || which > 7) which = 0;
    *kind = K[which];
    *bits = B[which];
}

static size_t groups(int n) { return ((size_t)n + KV_STORE_GROUP - 1) / KV_STORE_GROUP; }

/* bytes of one vector of n channels */
static size_t part_bytes(int kind, int bits, int n)
{
    switch (kind) {
    case KV_STORE_F16: return 2 * (size_t)n;
    case KV_STORE_KIVI: return 4 * groups(n) + kv_qcode_bytes(bits, (size_t)n);
    case KV_STORE_TQ: return sizeof(float) + kv_tq_code_bytes(bits, (size_t)n);
    default: return sizeof(float) * (size_t)n;
    }
}

size_t kv_store_row_bytes(int which, int d, int dv)
{
    int kind, bits;
    kind_bits(which, &kind, &bits);
    return part_bytes(kind, bits, d) + part_bytes(kind, bits, dv);
}

int kv_store_init(kv_store *s, int which, int d, int dv, uint64_t seed, int64_t stream, int owner, kv_err *err)
{
    memset(s, 0, sizeof *s);
    s->which = which;
    kind_bits(which, &s->kind, &s->bits);
    s->d = d;
    s->dv = dv;
    s->owner = owner;
    s->kbytes = part_bytes(s->kind, s->bits, d);
    s->row = s->kbytes + part_bytes(s->kind, s->bits, dv);
    if (s->kind != KV_STORE_TQ) return KV_OK;
    int m = d > dv ? d : dv;
    s->Rk = malloc(sizeof(float) * (size_t)d * d);
    s->Rv = malloc(sizeof(float) * (size_t)dv * dv);
    s->y = malloc(sizeof(float) * (size_t)m);
    s->u = malloc(sizeof(double) * (size_t)dv);
    /* keys and values get rotations of their own: streams 2s and 2s + 1 of the seed */
    if (!s->Rk || !s->Rv || !s->y || !s->u || kv_tq_rotation(s->Rk, d, seed, 2 * (uint64_t)stream) ||
        kv_tq_rotation(s->Rv, dv, seed, 2 * (uint64_t)stream + 1) || kv_tq_book_make(&s->bk, d, s->bits) ||
        kv_tq_book_make(&s->bv, dv, s->bits)) {
        kv_store_free(s);
        return kv_seterr(err, KV_EINTERNAL, "store: out of memory for the TurboQuant rotations");
    }
    return KV_OK;
}

void kv_store_free(kv_store *s)
{
    free(s->Rk);
    free(s->Rv);
    free(s->y);
    free(s->u);
    s->Rk = s->Rv = s->y = NULL;
    s->u = NULL;
}

int64_t kv_store_fixed_of(int which, int d, int dv)
{
    int kind, bits;
    kind_bits(which, &kind, &bits);
    if (kind != KV_STORE_TQ) return 0;
    return (int64_t)sizeof(float) * ((int64_t)d * d + (int64_t)dv * dv) + 2 * (int64_t)sizeof(kv_tq_book);
}

int64_t kv_store_fixed_bytes(const kv_store *s)
{
    return s->owner ? kv_store_fixed_of(s->which, s->d, s->dv) : 0;
}

const char *kv_store_name(int which)
{
    static const char *N[] = { "f32", "f16", "kivi2", "kivi4", "kivi8", "tq2", "tq3", "tq4" };
    return which >= 0 && which < 8 ? N[which] : "?";
}

int kv_store_refused(const kv_store *s, const char *who, kv_err *err)
{
    return kv_seterr(err, KV_EINPUT, "%s: store=%s cannot hold a key or value beyond half's range (|x| > 65504); use store=f32",
                     who, kv_store_name(s->which));
}

static int enc_part(kv_store *s, const float *x, int n, const kv_tq_book *book, const float *R, uint8_t *p)
{
    switch (s->kind) {
    case KV_STORE_F16:
        for (int i = 0; i < n; i++) {
            uint16_t h = kv_half_from_float(x[i]);
            if (!isfinite(kv_half_to_float(h))) return -1;
            memcpy(p + 2 * (size_t)i, &h, 2);
        }
        return 0;
    case KV_STORE_KIVI: {
        uint8_t *codes = p + 4 * groups(n);
        for (size_t g = 0; g * KV_STORE_GROUP < (size_t)n; g++) {
            size_t c0 = g * KV_STORE_GROUP, len = (size_t)n - c0 < KV_STORE_GROUP ? (size_t)n - c0 : KV_STORE_GROUP;
            uint16_t zs[2];
            if (kv_quantise(x + c0, len, 1, s->bits, codes, c0, 1, zs)) return -1;
            memcpy(p + 4 * g, zs, 4);
        }
        return 0;
    }
    default: {
        float norm = kv_tq_encode(book, R, x, s->y, p + sizeof(float));
        memcpy(p, &norm, sizeof norm);
        return 0;
    }
    }
}

int kv_store_encode(kv_store *s, const float *k, const float *v, uint8_t *row)
{
    memset(row, 0, s->row); /* the packers OR codes in */
    return enc_part(s, k, s->d, &s->bk, s->Rk, row) || enc_part(s, v, s->dv, &s->bv, s->Rv, row + s->kbytes) ? -1 : 0;
}

static void dec_part(const kv_store *s, const uint8_t *p, int n, const kv_tq_book *book, float *x)
{
    switch (s->kind) {
    case KV_STORE_F16:
        for (int i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * (size_t)i, 2);
            x[i] = kv_half_to_float(h);
        }
        return;
    case KV_STORE_KIVI: {
        const uint8_t *codes = p + 4 * groups(n);
        for (size_t g = 0; g * KV_STORE_GROUP < (size_t)n; g++) {
            size_t c0 = g * KV_STORE_GROUP, len = (size_t)n - c0 < KV_STORE_GROUP ? (size_t)n - c0 : KV_STORE_GROUP;
            uint16_t zs[2];
            memcpy(zs, p + 4 * g, 4);
            kv_dequantise(codes, c0, 1, len, s->bits, zs, x + c0, 1);
        }
        return;
    }
    default: {
        float norm;
        memcpy(&norm, p, sizeof norm);
        kv_tq_decode(book, p + sizeof(float), norm, x);
        return;
    }
    }
}

void kv_store_keys(const kv_store *s, const uint8_t *rows, size_t n, float *K)
{
    for (size_t t = 0; t < n; t++) dec_part(s, rows + t * s->row, s->d, &s->bk, K + t * (size_t)s->d);
}

void kv_store_vals(const kv_store *s, const uint8_t *rows, size_t n, float *V)
{
    for (size_t t = 0; t < n; t++) dec_part(s, rows + t * s->row + s->kbytes, s->dv, &s->bv, V + t * (size_t)s->dv);
}

const float *kv_store_queries(const kv_store *s, const float *Q, int nq, float *out)
{
    if (s->kind != KV_STORE_TQ) return Q;
    size_t d = (size_t)s->d;
    /* <R q, R k> = <q, k>: the keys stay rotated */
    for (int q = 0; q < nq; q++)
        for (size_t i = 0; i < d; i++) {
            double a = 0;
            for (size_t j = 0; j < d; j++) a += (double)s->Rk[i * d + j] * Q[q * d + j];
            out[q * d + i] = (float)a;
        }
    return out;
}

const float *kv_store_prep(const kv_store *s, kv_qprep *sc, const float *Q, int nq)
{
    if (!s || s->kind != KV_STORE_TQ) return Q;
    size_t need = (size_t)(nq > 0 ? nq : 0) * (size_t)s->d;
    if (need > sc->cap) {
        float *q = realloc(sc->q, sizeof(float) * need);
        if (!q) return NULL;
        sc->q = q;
        sc->cap = need;
    }
    return kv_store_queries(s, Q, nq, sc->q);
}

void kv_qprep_free(kv_qprep *sc)
{
    free(sc->q);
    sc->q = NULL;
    sc->cap = 0;
}

void kv_store_finish(const kv_store *s, double *st, int nq)
{
    if (s->kind != KV_STORE_TQ) return;
    size_t dv = (size_t)s->dv, sl = KV_PSTATE_LEN(s->dv);
    double *u = s->u;
    for (int q = 0; q < nq; q++) {
        double *x = st + q * sl + KV_PS_U;
        /* u = Rv^T u': the values were summed rotated */
        for (size_t j = 0; j < dv; j++) {
            double a = 0;
            for (size_t i = 0; i < dv; i++) a += (double)s->Rv[i * dv + j] * x[i];
            u[j] = a;
        }
        memcpy(x, u, sizeof(double) * dv);
    }
}

int kv_store_row_ok(const kv_store *s, const uint8_t *row, float *tmp)
{
    if (s->kind == KV_STORE_KIVI) {
        for (int part = 0; part < 2; part++) {
            const uint8_t *p = row + (part ? s->kbytes : 0);
            for (size_t g = 0; g < groups(part ? s->dv : s->d); g++) {
                uint16_t zs[2];
                memcpy(zs, p + 4 * g, 4);
                if (!kv_qparams_ok(zs)) return 0;
            }
        }
    }
    if (s->kind == KV_STORE_TQ) {
        float nk, nv;
        memcpy(&nk, row, sizeof nk);
        memcpy(&nv, row + s->kbytes, sizeof nv);
        if (!(nk >= 0) || !(nv >= 0) || !isfinite(nk) || !isfinite(nv)) return 0;
    }
    kv_store_keys(s, row, 1, tmp);
    kv_store_vals(s, row, 1, tmp + s->d);
    for (int i = 0; i < s->d + s->dv; i++)
        if (!isfinite(tmp[i])) return 0;
    return 1;
}
