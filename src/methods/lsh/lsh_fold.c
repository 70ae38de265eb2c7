/* lsh_fold.c - lsh's fold of a query's sample (lsh_fold.h): the rows' dots, their
 * log u (MagicPIG's collision probability, lsh.c's header) and the
 * importance-weighted partial state, bitwise the arithmetic of one row at
 * a time. */
#include "methods/lsh/lsh_fold.h"
#include <math.h>
#include "kernels/dot.h"
#include "kernels/partial.h"

/* log P(Binomial(L, p) >= t), t >= 1, for FB values p[j] in (0, 1] (0
 * where p[j] is 0: never sampled), into lu[j]: the tail summed from its
 * first term, in logs so that a small p does not cancel or underflow
 * (lt0 = log C(L, t)).  The sums run in vector lanes, one p a lane, each
 * lane's operations those of the scalar loop and stopped at its own
 * iteration (the same j for every lane: all start at t), so each sum is
 * that loop's. */
#define FB KV_LSH_FB
typedef double lsh_v8d __attribute__((vector_size(64)));
typedef long long lsh_v8l __attribute__((vector_size(64)));

static void log_tails(int L, int t, double lt0, const double *p, double *lu)
{
    lsh_v8d r[2], term[2], sum[2];
    lsh_v8l act[2];
    for (int j = 0; j < FB; j++) {
        int h = j / 8, k = j % 8, on = p[j] > 0 && p[j] < 1.0;
        r[h][k] = on ? p[j] / (1.0 - p[j]) : 0.0;
        act[h][k] = on ? -1 : 0;
        term[h][k] = sum[h][k] = 1.0;
    }
    for (int j = t; j < L; j++) {
        lsh_v8l any = act[0] | act[1];
        long long a = 0;
        for (int k = 0; k < 8; k++) a |= any[k];
        if (!a) break;
        double c1 = (double)(L - j), c2 = (double)(j + 1);
        for (int h = 0; h < 2; h++) {
            lsh_v8d nt = term[h] * (r[h] * c1 / c2), ns = sum[h] + nt; /* term *= r (L - j) / (j + 1); sum += term */
            term[h] = (lsh_v8d)(((lsh_v8l)nt & act[h]) | ((lsh_v8l)term[h] & ~act[h]));
            sum[h] = (lsh_v8d)(((lsh_v8l)ns & act[h]) | ((lsh_v8l)sum[h] & ~act[h]));
            /* terms only shrink from here */
            act[h] &= ~((nt < 1e-17 * ns) & (c1 * r[h] < c2));
        }
    }
    for (int j = 0; j < FB; j++) {
        lu[j] = 0.0;
        if (!(p[j] > 0 && p[j] < 1.0)) continue;
        double lt = lt0 + t * log(p[j]) + (L - t) * log1p(-p[j]);
        double v = lt + log(sum[j / 8][j % 8]);
        lu[j] = v < 0.0 ? v : 0.0;
    }
}

/* every 64-byte line of [p, p + n) toward L1.  The empty asm keeps the
 * loop: GCC 12 deletes a loop whose body is only prefetches (tree DCE, at
 * -O2 and -O3), which had left the rows' prefetch out of the build. */
static inline void prefetch_lines(const void *p, size_t n)
{
    for (size_t o = 0; o < n; o += 64) {
        const char *a = (const char *)p + o;
        __builtin_prefetch(a);
        __asm__ volatile("" ::"r"(a));
    }
}

/* fold the sample's rows rows[0 .. ns) into st, each e^{a} / u, in
 * row order, in three passes: the dots (short per row, so the out-of-order
 * window holds several rows' key loads at once, and each key is
 * prefetched PF rows ahead), log u, FB rows at a time stage by stage (a
 * stage's library calls do not wait on each other, so they overlap, where
 * one row's chain of calls would run serially), then the fold with the
 * values prefetched PF rows ahead.  Each row's arithmetic is the same as
 * one row at a time. */
#define PF 16
void kv_lsh_fold(const kv_lsh_rows *s, const float *q, const uint32_t *rows, size_t ns, float *dot, double *lu,
                 double *st)
{
    int d = s->d, dv = s->dv;
    float scale = s->scale;
    double qn = sqrt((double)kv_dot_fixed(q, q, d)), y[FB];
    size_t kb = (size_t)d * sizeof(float), vb = (size_t)dv * sizeof(float);
    for (size_t i = 0; i < ns; i++) {
        if (i + PF < ns) prefetch_lines(s->Kr + (size_t)rows[i + PF] * d, kb);
        const float *k = s->Kr + (size_t)rows[i] * d;
        dot[2 * i] = kv_dot_fixed(q, k, d);
        dot[2 * i + 1] = s->thr > 0 ? kv_dot_fixed(k, k, d) : 0.0f;
    }
    for (size_t i0 = 0; s->thr > 0 && i0 < ns; i0 += FB) {
        size_t m = ns - i0 < FB ? ns - i0 : FB;
        for (size_t j = 0; j < m; j++) {
            double kn = sqrt((double)dot[2 * (i0 + j) + 1]);
            double cs = qn > 0 && kn > 0 ? (double)dot[2 * (i0 + j)] / (qn * kn) : 0.0;
            cs = cs > 1 ? 1 : cs < -1 ? -1 : cs;
            y[j] = 1.0 - acos(cs) / M_PI;
        }
        for (size_t j = 0; j < m; j++) y[j] = pow(y[j], s->K); /* p1: the chance to collide in one table */
        for (size_t j = m; j < FB; j++) y[j] = 0.0;
        log_tails(s->L, s->thr, s->lt0, y, lu + i0); /* p1 = 0 cannot collide: never sampled */
    }
    for (size_t i = 0; i < ns && i < PF; i++) prefetch_lines(s->V + (size_t)rows[i] * dv, vb);
    for (size_t i = 0; i < ns; i++) {
        if (i + PF < ns) prefetch_lines(s->V + (size_t)rows[i + PF] * dv, vb);
        double a = (double)(dot[2 * i] * scale), u = s->thr > 0 ? lu[i] : 0.0;
        kv_partial_add_one(st, dv, a - u, 1.0, s->V + (size_t)rows[i] * dv); /* e^{a} / u */
    }
}
