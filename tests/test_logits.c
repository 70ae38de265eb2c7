/* test_logits.c - kernels/logits.h: a packed tile's logits are bitwise
 * kv_dot_fixed(q, k, d) * scale (what topk's single-query path and its
 * threshold compares use), for widths with and without a tail of channels
 * (d mod 8), full and partial tiles; padding keys give 0 and the returned
 * value is the largest of the tile's logits.  kv_lt_logits_q (topk's batch:
 * several queries per key load) the same, query by query, for 1..13
 * queries (whole register blocks of KV_LQ and the rest). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/dot.h"
#include "kernels/logits.h"
#include "testutil.h"

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* nq queries at once against kv_dot_fixed, each logit's bits and each max */
static void check_multi(const float *K, const float *KT, size_t nt, int d, kv_rng *seed)
{
    enum { NQ = 13 };
    float *Q = malloc(sizeof(float) * NQ * (size_t)d), out[NQ * KV_LT], top[NQ];
    const float *qs[NQ];
    for (int i = 0; i < NQ * d; i++) Q[i] = (float)kv_rng_normal(seed);
    for (int i = 0; i < NQ; i++) qs[i] = Q + (size_t)i * d;
    for (int nq = 1; nq <= NQ; nq++) {
        kv_lt_logits_q(qs, nq, KT, d, 0.25f, out, top);
        int same = 1, tops = 1;
        for (int i = 0; i < nq; i++) {
            float want_top = -INFINITY;
            for (size_t t = 0; t < KV_LT; t++) {
                float want = t < nt ? kv_dot_fixed(qs[i], K + t * d, d) * 0.25f : 0.0f;
                same &= bits(out[i * KV_LT + t]) == bits(want);
                want_top = want > want_top ? want : want_top;
            }
            tops &= top[i] == want_top;
        }
        CHECK(same, "d=%d nt=%zu nq=%d: a logit of kv_lt_logits_q differs from kv_dot_fixed's bits", d, nt, nq);
        CHECK(tops, "d=%d nt=%zu nq=%d: kv_lt_logits_q's max differs", d, nt, nq);
    }
    free(Q);
}

int main(void)
{
    static const int ds[] = { 1, 3, 7, 8, 13, 64, 67, 128 };
    static const size_t nts[] = { 1, 5, KV_LT - 1, KV_LT };
    kv_rng seed;
    kv_rng_seed(&seed, 7, 0, 0);
    for (size_t a = 0; a < sizeof ds / sizeof ds[0]; a++) {
        int d = ds[a];
        float *K = malloc(sizeof(float) * KV_LT * d), *KT = malloc(sizeof(float) * KV_LT * d), *q = malloc(sizeof(float) * d);
        for (size_t b = 0; b < sizeof nts / sizeof nts[0]; b++) {
            size_t nt = nts[b];
            for (int rep = 0; rep < 4; rep++) {
                /* magnitudes spread over 2^-8..2^8: the order of the sums shows in the last bits */
                for (size_t i = 0; i < KV_LT * (size_t)d; i++)
                    K[i] = (float)(kv_rng_normal(&seed) * ldexp(1.0, (int)(kv_rng_below(&seed, 17)) - 8));
                for (int c = 0; c < d; c++) q[c] = (float)kv_rng_normal(&seed);
                kv_lt_pack(K, nt, d, KT);
                float out[KV_LT], scale = 0.125f + 0.01f * rep;
                float top = kv_lt_logits(q, KT, d, scale, out), want_top = -INFINITY;
                int same = 1;
                for (size_t t = 0; t < KV_LT; t++) {
                    float want = t < nt ? kv_dot_fixed(q, K + t * d, d) * scale : 0.0f;
                    same &= bits(out[t]) == bits(want);
                    want_top = out[t] > want_top ? out[t] : want_top;
                }
                CHECK(same, "d=%d nt=%zu rep %d: a logit differs from kv_dot_fixed's bits", d, nt, rep);
                CHECK(top == want_top, "d=%d nt=%zu: returned max %g, want %g", d, nt, top, want_top);
            }
            check_multi(K, KT, nt, d, &seed);
        }
        free(K);
        free(KT);
        free(q);
    }
    return kv_test_result("test_logits");
}
