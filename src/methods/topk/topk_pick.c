/* topk_pick.c - see topk_pick.h.  The filter tests 16 logits at once
 * (AVX-512: a compare mask, then only its set lanes appended); a full
 * buffer finds its k-th largest value by bisecting its order-preserving
 * bit keys (vector counts, no data-dependent branches), then keeps a
 * prefix-stable k. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/search.h"
#include "methods/topk/topk_pick.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define CH 16 /* logits per chunk tested at once */

void kv_tk_init(kv_tk_picker *p, void *buf, size_t k)
{
    size_t cap = kv_tk_cap(k);
    *p = (kv_tk_picker){ (float *)((int64_t *)buf + cap), buf, 0, cap, k, k ? -INFINITY : INFINITY, -INFINITY, { 0 } };
    for (int i = 0; i < KV_TK_OML; i++) p->omv[i] = -INFINITY;
}

float kv_tk_max(const float *a, size_t n)
{
    float m[8];
    for (int j = 0; j < 8; j++) m[j] = -INFINITY;
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) m[j] = a[i + j] > m[j] ? a[i + j] : m[j];
    for (; i < n; i++) m[0] = a[i] > m[0] ? a[i] : m[0];
    for (int w = 4; w; w /= 2)
        for (int j = 0; j < w; j++) m[j] = m[j] > m[j + w] ? m[j] : m[j + w];
    return m[0];
}

/* a float's bits as an unsigned key in the same order (finite, -0 < +0) */
static inline uint32_t okey(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x80000000u ? ~u : u | 0x80000000u;
}

#if defined(__AVX512F__)
/* okey of 16 floats' bits at once */
static inline __m512i okey16(__m512i u)
{
    __m512i neg = _mm512_srai_epi32(u, 31); /* all ones where the sign is set */
    return _mm512_xor_si512(u, _mm512_or_si512(neg, _mm512_set1_epi32((int)0x80000000u)));
}

/* how many of v[0..n) have keys >= x: 16 at a time, the tail masked */
static size_t count_ge(const float *v, size_t n, uint32_t x)
{
    __m512i X = _mm512_set1_epi32((int)x);
    size_t c = 0, i = 0;
    for (; i + 16 <= n; i += 16)
        c += (size_t)__builtin_popcount(_mm512_cmpge_epu32_mask(okey16(_mm512_loadu_si512(v + i)), X));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        c += (size_t)__builtin_popcount(_mm512_mask_cmpge_epu32_mask(m, okey16(_mm512_maskz_loadu_epi32(m, v + i)), X));
    }
    return c;
}
#else
/* how many of v[0..n) have keys >= x */
static size_t count_ge(const float *v, size_t n, uint32_t x)
{
    uint32_t c = 0;
    for (size_t i = 0; i < n; i++) c += okey(v[i]) >= x;
    return c;
}
#endif

/* the k-th largest key of v[0..n) (1 <= k <= n): the largest x with >= k
 * keys >= x, bit by bit from the top; the bits above the highest one where
 * the smallest and largest keys differ are theirs (every key shares them) */
static uint32_t kth_key(const float *v, size_t n, size_t k)
{
    uint32_t lo = UINT32_MAX, hi = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t key = okey(v[i]);
        lo = key < lo ? key : lo;
        hi = key > hi ? key : hi;
    }
    uint32_t diff = lo ^ hi;
    if (!diff) return lo;
    int top = 31 - __builtin_clz(diff);
    uint32_t t = lo & ~((2u << top) - 1); /* 2u << 31 wraps to 0: no prefix */
    for (int bit = top; bit >= 0; bit--)
        if (count_ge(v, n, t | 1u << bit) >= k) t |= 1u << bit;
    return t;
}

/* the buffer cut back to its k largest (among ties at the k-th, the first
 * in the buffer); the rest left out */
static void compact(kv_tk_picker *p)
{
    size_t n = p->n, k = p->k;
    uint32_t t = kth_key(p->v, n, k); /* the k-th largest key */
    size_t above = 0;
    for (size_t i = 0; i < n; i++) above += okey(p->v[i]) > t;
    size_t ties = k - above, m = 0; /* keep every key above t and the first ties at t */
    float om = p->om, thr = INFINITY;
    for (size_t i = 0; i < n; i++) {
        uint32_t key = okey(p->v[i]);
        int keep = key > t || (key == t && ties && ties--);
        if (keep) {
            thr = p->v[i] < thr ? p->v[i] : thr;
            p->v[m] = p->v[i];
            p->r[m++] = p->r[i];
        } else {
            om = p->v[i] > om ? p->v[i] : om;
        }
    }
    p->om = om;
    p->thr = thr;
    p->n = m;
}

#if defined(__AVX512F__)
static void feed_chunk(kv_tk_picker *p, const float *a, size_t r)
{
    __m512 v = _mm512_loadu_ps(a), om = _mm512_loadu_ps(p->omv);
    __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(p->thr), _CMP_GT_OQ);
    if (m && p->n + CH > p->cap) {
        compact(p);
        m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(p->thr), _CMP_GT_OQ);
    }
    _mm512_storeu_ps(p->omv, _mm512_mask_max_ps(om, (__mmask16)~m, om, v)); /* the lanes left out */
    for (unsigned b = m; b; b &= b - 1) {
        int i = __builtin_ctz(b);
        p->v[p->n] = a[i];
        p->r[p->n++] = (int64_t)(r + (size_t)i);
    }
}
#else
static void feed_chunk(kv_tk_picker *p, const float *a, size_t r)
{
    float cm = kv_tk_max(a, CH);
    if (cm <= p->thr) {
        p->omv[0] = cm > p->omv[0] ? cm : p->omv[0];
        return;
    }
    if (p->n + CH > p->cap) compact(p);
    for (int i = 0; i < CH; i++) {
        if (a[i] > p->thr) {
            p->v[p->n] = a[i];
            p->r[p->n++] = (int64_t)(r + (size_t)i);
        } else p->omv[i] = a[i] > p->omv[i] ? a[i] : p->omv[i];
    }
}
#endif

void kv_tk_feed(kv_tk_picker *p, const float *a, size_t r0, size_t nt, float top)
{
    if (top <= p->thr) { /* nothing enters (the usual case once the list settles) */
        p->om = top > p->om ? top : p->om;
        return;
    }
    size_t t = 0;
    for (; t + CH <= nt; t += CH) {
        if (p->thr == -INFINITY && p->n >= p->k) compact(p); /* k kept: a threshold from now on */
        feed_chunk(p, a + t, r0 + t);
    }
    for (; t < nt; t++) { /* a partial chunk: one by one */
        if (a[t] > p->thr && p->n == p->cap) compact(p);
        if (a[t] > p->thr) {
            p->v[p->n] = a[t];
            p->r[p->n++] = (int64_t)(r0 + t);
        } else p->om = a[t] > p->om ? a[t] : p->om;
    }
}

static int desc_f(const void *x, const void *y)
{
    float a = *(const float *)x, b = *(const float *)y;
    return (a < b) - (a > b);
}

void kv_tk_done(kv_tk_picker *p, int L, double *sel, int64_t *rows, int64_t *nrows, float *out)
{
    if (p->n > p->k) compact(p);
    size_t k = p->n; /* = p->k: every logit is kept until k are */
    qsort(p->v, k, sizeof *p->v, desc_f); /* values and rows sort apart: both sets are what count */
    for (size_t i = 0; i < k; i++) sel[i] = (double)p->v[i];
    for (size_t i = k; i < (size_t)L; i++) sel[i] = -INFINITY;
    memcpy(rows, p->r, sizeof(int64_t) * k);
    qsort(rows, k, sizeof(int64_t), kv_cmp_i64);
    *nrows = (int64_t)k;
    float om = p->om;
    for (int i = 0; i < KV_TK_OML; i++) om = p->omv[i] > om ? p->omv[i] : om;
    *out = om;
}
