/* testutil.c - see testutil.h */
#include <math.h>
#include <stdlib.h>
#include "testutil.h"

int kv_test_failures = 0, kv_test_checks = 0;

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
