/* testutil.c - see testutil.h */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include "testutil.h"

int kv_test_failures = 0, kv_test_checks = 0;
int kv_test_expecting = 0, kv_test_expected = 0;
char kv_test_last[512];

void kv_test_fail(const char *file, int line, const char *cond, const char *fmt, ...)
{
    char msg[sizeof kv_test_last]; /* the arguments may read kv_test_last */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(kv_test_last, msg, sizeof msg);
    if (kv_test_expecting) kv_test_expected++;
    else kv_test_failures++;
    fprintf(stderr, "%s %s:%d: %s: %s\n", kv_test_expecting ? "expected" : "FAIL", file, line, cond, kv_test_last);
}

int kv_test_result(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, kv_test_checks - kv_test_failures, kv_test_failures);
    return kv_test_failures ? 1 : 0;
}

int kv_test_part(int k)
{
    const char *e = getenv("KV_TEST_PART");
    unsigned i = 0, n = 1;
    if (e && *e && (sscanf(e, "%u/%u", &i, &n) != 2 || n < 1 || i >= n)) {
        CHECK(0, "KV_TEST_PART '%s' is not i/n with 0 <= i < n", e);
        return 0;
    }
    return (unsigned)k % n == i;
}

double kv_test_relerr(const double *a, const double *b, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]);
        num = e > num ? e : num;
        den = fabs(b[i]) > den ? fabs(b[i]) : den;
    }
    return num / (den > 1e-300 ? den : 1e-300);
}

double kv_test_logits(const float *q, const float *K, size_t n, int d, float scale, double *a)
{
    const double u = 0x1p-24, gam = d * u / (1 - d * u);
    double emax = 0;
    for (size_t t = 0; t < n; t++) {
        double dot = 0, s1 = 0;
        for (int c = 0; c < d; c++) {
            dot += (double)q[c] * K[t * d + c];
            s1 += fabs((double)q[c] * K[t * d + c]);
        }
        a[t] = dot * scale;
        double e = gam * scale * s1 + u * fabs(a[t]) / (1 - u);
        emax = e > emax ? e : emax;
    }
    return emax;
}

int kv_test_decide(const kv_method_ops *ops, void *st, int64_t x, int at_query)
{
    if (!ops->decide_need) return KV_OK;
    int64_t need = ops->decide_need(st, x, at_query);
    if (need <= 0) return KV_OK;
    size_t hl = ops->decide_halo_len ? ops->decide_halo_len(st, x) : 0;
    double *halo = calloc(hl + 1, sizeof(double));
    kv_evkey *keys = malloc(sizeof(kv_evkey) * (size_t)(need + 1));
    int rc = KV_EINTERNAL;
    if (halo && keys) {
        if (hl) ops->decide_halo(st, x, halo);
        rc = ops->decide_cands(&st, 1, x, hl ? halo : NULL, (int)need + 1, keys);
        if (rc == KV_OK) rc = ops->decide_apply(&st, 1, x, keys, need);
    }
    free(halo);
    free(keys);
    return rc;
}
