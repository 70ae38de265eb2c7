/* testutil.h - tiny assertion helpers for kvstream's C tests.
 * CHECK records a failure and goes on; tests return kv_test_result(). */
#ifndef KVSTREAM_TESTUTIL_H
#define KVSTREAM_TESTUTIL_H
#include <stdio.h>

extern int kv_test_failures, kv_test_checks;

#define CHECK(cond, ...) do { kv_test_checks++; if (!(cond)) { kv_test_failures++; \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

/* prints "N passed, N failed" and returns the exit status */
int kv_test_result(const char *name);
/* KV_TEST_PART=i/n in the environment (ctest runs the parts of a long test
 * binary side by side): is case k (0, 1, 2, ...) one of part i's, i.e.
 * k % n == i?  Without it every case is.  A malformed value is every case
 * of no part: the test then checks nothing and says so. */
int kv_test_part(int k);
/* max_i |a_i - b_i| / max(max_i |b_i|, tiny) */
double kv_test_relerr(const double *a, const double *b, int n);
#endif
