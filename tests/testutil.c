/* testutil.c - see testutil.h */
#include <math.h>
#include <stdarg.h>
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
