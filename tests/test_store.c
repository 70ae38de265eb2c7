/* test_store.c - the held-row stores of the evicting methods
 * (methods/store.h, slots.h with a store):
 *   - row bytes follow the bits formula, and a slot set's memory is its
 *     capacity times (row + index + score + heap ints);
 *   - kivi rows read back within half a step (plus the half-rounded zero
 *     point's error) of every number; f16 rows give exactly the half;
 *   - a tq store's logits in its rotated domain equal the original-domain
 *     dot with the decoded key, and its finished value sums are the decoded
 *     values' sums (rotation orthogonal: to float rounding);
 *   - attention through coded slots with f16 on half-exact data is bitwise
 *     kv_attn_held over the floats;
 *   - a number whose half (f16) or zero point (kivi) is beyond half's
 *     range is refused, not stored as inf;
 *   - both heapify forms give the plain sift's heap layout. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/held.h"
#include "kernels/partial.h"
#include "methods/common/quant.h"
#include "methods/common/slots.h"
#include "methods/common/store.h"
#include "testutil.h"

enum { D = 40, DV = 24 }; /* not multiples of the kivi group: a short last group */

static void fill(float *x, size_t n, kv_rng *r, int half_exact)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = (float)kv_rng_normal(r);
        if (half_exact) x[i] = kv_half_to_float(kv_half_from_float(x[i]));
    }
}

static void test_formulas(void)
{
    /* which: f32 f16 kivi2 kivi4 kivi8 tq2 tq3 tq4 */
    size_t want[8] = { 4 * (D + DV), 2 * (D + DV), 4 * 2 + 10 + 4 * 1 + 6, 4 * 2 + 20 + 4 * 1 + 12,
                       4 * 2 + 40 + 4 * 1 + 24, 4 + 10 + 4 + 6, 4 + 15 + 4 + 9, 4 + 20 + 4 + 12 };
    for (int w = 0; w < 8; w++) {
        CHECK(kv_store_row_bytes(w, D, DV) == want[w], "%s: row %zu bytes, formula %zu", kv_store_name(w),
              kv_store_row_bytes(w, D, DV), want[w]);
        kv_store st;
        kv_err err = { 0, "" };
        CHECK(kv_store_init(&st, w, D, DV, 1, 0, 1, &err) == KV_OK, "init %s", kv_store_name(w));
        kv_slots s;
        kv_slots_init(&s, D, DV, 2, 0);
        kv_slots_use_store(&s, &st);
        CHECK(kv_slots_grow(&s, 37, "test", &err) == KV_OK, "grow");
        int64_t per = (int64_t)want[w] + 8 + 8 + 3 * 4;
        CHECK((int64_t)kv_slots_bytes(&s) == 37 * per, "%s: %zu bytes for 37 slots, formula %lld", kv_store_name(w),
              kv_slots_bytes(&s), (long long)(37 * per));
        CHECK(kv_slots_row_bytes_in(w, D, DV, 2, 0) == per, "%s: row_bytes_in", kv_store_name(w));
        int64_t fx = w >= 5 ? 4 * (D * D + DV * DV) + 2 * (int64_t)sizeof(kv_tq_book) : 0;
        CHECK(kv_store_fixed_bytes(&st) == fx && kv_store_fixed_of(w, D, DV) == fx, "%s: fixed bytes", kv_store_name(w));
        kv_slots_free(&s);
        kv_store_free(&st);
    }
}

static void test_roundtrip(void)
{
    kv_rng r;
    kv_rng_seed(&r, 3, 0, 0);
    float k[D], v[DV], K[D], V[DV];
    uint8_t row[4 * (D + DV)];
    for (int w = 1; w <= 4; w++) {
        kv_store st;
        kv_err err = { 0, "" };
        kv_store_init(&st, w, D, DV, 1, 0, 1, &err);
        for (int t = 0; t < 50; t++) {
            fill(k, D, &r, 0);
            fill(v, DV, &r, 0);
            CHECK(kv_store_encode(&st, k, v, row) == 0, "encode");
            kv_store_keys(&st, row, 1, K);
            kv_store_vals(&st, row, 1, V);
            for (int part = 0; part < 2; part++) {
                const float *x = part ? v : k, *y = part ? V : K;
                int n = part ? DV : D;
                float lo = x[0], hi = x[0];
                for (int i = 0; i < n; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
                /* kivi: a step (hi - lo) / L over a group at most; half rounding of z and s adds
                 * 2^-11 relative of |z| and of s L */
                double tol = w == 1 ? 0 : (hi - lo) / ((1 << st.bits) - 1) * 0.5 * 1.01 + 2e-3 * (fabsf(lo) + hi - lo);
                for (int i = 0; i < n; i++) {
                    double want = w == 1 ? kv_half_to_float(kv_half_from_float(x[i])) : x[i];
                    CHECK(fabs(y[i] - want) <= tol, "%s: element %d reads %g for %g (tolerance %g)",
                          kv_store_name(w), i, y[i], x[i], tol);
                }
            }
        }
        /* kivi holds a maximum of 70000 (zero point and scale fit in half), not a minimum */
        k[3] = -70000.f;
        CHECK(kv_store_encode(&st, k, v, row) == -1, "%s: -70000 accepted", kv_store_name(w));
        kv_store_free(&st);
    }
}

static void test_tq_domain(void)
{
    kv_rng r;
    kv_rng_seed(&r, 4, 0, 0);
    kv_store st;
    kv_err err = { 0, "" };
    kv_store_init(&st, 6 /* tq3 */, D, DV, 9, 2, 1, &err);
    float k[D], v[DV], q[D], qr[D], Kr[D], Vr[DV];
    uint8_t row[4 * (D + DV)];
    fill(k, D, &r, 0);
    fill(v, DV, &r, 0);
    fill(q, D, &r, 0);
    kv_store_encode(&st, k, v, row);
    kv_store_keys(&st, row, 1, Kr);
    kv_store_vals(&st, row, 1, Vr);
    const float *qs = kv_store_queries(&st, q, 1, qr);
    /* back to the original domain: x = R^T y */
    double kx[D], vx[DV], st_[KV_PSTATE_LEN(DV)];
    for (int j = 0; j < D; j++) {
        kx[j] = 0;
        for (int i = 0; i < D; i++) kx[j] += (double)st.Rk[i * D + j] * Kr[i];
    }
    double a = 0, b = 0, nq = 0, nk = 0;
    for (int i = 0; i < D; i++) a += (double)qs[i] * Kr[i], b += q[i] * kx[i], nq += q[i] * q[i], nk += kx[i] * kx[i];
    CHECK(fabs(a - b) <= 1e-5 * sqrt(nq * nk), "tq logit %g in the rotated domain, %g in the original", a, b);
    /* the decoded key is close to the key (3 bits: relative MSE ~0.03 per vector) */
    double e = 0, n2 = 0;
    for (int j = 0; j < D; j++) e += (kx[j] - k[j]) * (kx[j] - k[j]), n2 += (double)k[j] * k[j];
    CHECK(e <= 0.15 * n2, "tq3 key error %g of %g", e, n2);
    kv_partial_clear(st_, DV);
    for (int i = 0; i < DV; i++) st_[KV_PS_U + i] = Vr[i];
    kv_store_finish(&st, st_, 1);
    for (int j = 0; j < DV; j++) {
        vx[j] = 0;
        for (int i = 0; i < DV; i++) vx[j] += (double)st.Rv[i * DV + j] * Vr[i];
        CHECK(fabs(st_[KV_PS_U + j] - vx[j]) <= 1e-9 * (1 + fabs(vx[j])), "finish %d", j);
    }
    kv_store_free(&st);
}

static void test_f16_bitwise(void)
{
    enum { N = 150, NQ = 3 }; /* over two tiles */
    kv_rng r;
    kv_rng_seed(&r, 5, 0, 0);
    float *K = malloc(sizeof(float) * N * D), *V = malloc(sizeof(float) * N * DV), Q[NQ * D];
    fill(K, N * D, &r, 1);
    fill(V, N * DV, &r, 1);
    fill(Q, NQ * D, &r, 0);
    kv_store st;
    kv_err err = { 0, "" };
    kv_store_init(&st, 1, D, DV, 1, 0, 1, &err);
    kv_slots a, b;
    kv_slots_init(&a, D, DV, 0, 0);
    kv_slots_init(&b, D, DV, 0, 0);
    kv_slots_use_store(&b, &st);
    kv_slots_grow(&a, N, "a", &err);
    kv_slots_grow(&b, N, "b", &err);
    for (int t = 0; t < N; t++) {
        kv_slots_set(&a, t, K + t * D, V + t * DV, t, 0);
        kv_slots_set(&b, t, K + t * D, V + t * DV, t, 0);
    }
    a.held = b.held = N;
    double sa[NQ * KV_PSTATE_LEN(DV)], sb[NQ * KV_PSTATE_LEN(DV)];
    CHECK(kv_slots_attn(&a, Q, NQ, 0.3, sa) == KV_OK && kv_slots_attn(&b, Q, NQ, 0.3, sb) == KV_OK, "attn");
    CHECK(!memcmp(sa, sb, sizeof sa), "f16 store on half data: states differ from f32");
    const double *la = kv_slots_logits(&a, Q, NQ, 0.3, 5, 100);
    double keep[NQ * 100];
    memcpy(keep, la, sizeof keep);
    const double *lb = kv_slots_logits(&b, Q, NQ, 0.3, 5, 100);
    CHECK(!memcmp(keep, lb, sizeof keep), "f16 store on half data: logits differ");
    CHECK(keep[0] == kv_held_logit(Q, K + 5 * D, D, 0.3), "logit of slot 5");
    kv_slots_free(&a);
    kv_slots_free(&b);
    kv_store_free(&st);
    free(K);
    free(V);
}

/* Floyd's heapify by (score, index), written plainly: the layout both
 * kv_slots_heapify and kv_slots_heapify_shuffled must give (a checkpoint
 * saves it) */
static void ref_heapify(const double *sc, const int64_t *ix, int32_t *a, int64_t n)
{
    for (int64_t i = n / 2 - 1; i >= 0; i--) {
        int64_t j = i;
        int32_t x = a[j];
        for (;;) {
            int64_t c = 2 * j + 1;
            if (c >= n) break;
            if (c + 1 < n && (sc[a[c + 1]] < sc[a[c]] || (sc[a[c + 1]] == sc[a[c]] && ix[a[c + 1]] < ix[a[c]]))) c++;
            if (!(sc[a[c]] < sc[x] || (sc[a[c]] == sc[x] && ix[a[c]] < ix[x]))) break;
            a[j] = a[c];
            j = c;
        }
        a[j] = x;
    }
}

/* - both heapify forms lay the heap out as the plain sift does, scores
 *   with and without ties, sizes 1 .. 2^11, and set every pos */
static void test_heapify(void)
{
    kv_rng r;
    kv_rng_seed(&r, 11, 0, 0);
    float k[2] = { 0, 0 }, v[2] = { 0, 0 };
    kv_err err;
    for (int it = 0; it < 60; it++) {
        int64_t n = 1 + (int64_t)(kv_rng_uniform(&r) * (it < 30 ? 40 : 2048));
        int ties = it % 2, shuffled = it % 3 != 0;
        kv_slots s;
        kv_slots_init(&s, 2, 2, 1, 0);
        CHECK(kv_slots_grow(&s, n, "test", &err) == KV_OK, "grow");
        int32_t *ref = malloc(sizeof(int32_t) * (size_t)n);
        for (int64_t i = 0; i < n; i++) {
            double sc = ties ? (double)(int)(kv_rng_uniform(&r) * 5) : kv_rng_uniform(&r);
            kv_slots_set(&s, (int32_t)i, k, v, (int64_t)(kv_rng_uniform(&r) * 1e6) * 64 + i, sc);
            s.heap[0][i] = ref[i] = (int32_t)i;
        }
        s.held = s.hsize[0] = n;
        ref_heapify(s.score, s.idx, ref, n);
        if (shuffled) kv_slots_heapify_shuffled(&s, 0);
        else kv_slots_heapify(&s, 0);
        CHECK(!memcmp(ref, s.heap[0], sizeof(int32_t) * (size_t)n), "heapify%s of %lld slots (ties %d): another layout",
              shuffled ? "_shuffled" : "", (long long)n, ties);
        int pos_ok = 1;
        for (int64_t i = 0; i < n; i++) pos_ok &= s.pos[s.heap[0][i]] == (int32_t)i;
        CHECK(pos_ok, "heapify: pos does not match the heap");
        free(ref);
        kv_slots_free(&s);
    }
}

int main(void)
{
    test_formulas();
    test_roundtrip();
    test_tq_domain();
    test_f16_bitwise();
    test_heapify();
    return kv_test_result("test_store");
}
