/* testutil.h - tiny assertion helpers for kvstream's C tests.
 * CHECK records a failure and goes on; tests return kv_test_result(). */
#ifndef KVSTREAM_TESTUTIL_H
#define KVSTREAM_TESTUTIL_H
#include <stdio.h>
#include "methods/method.h"

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
/* One instance of a deciding method (method.h: decide hooks) at point x,
 * as if it held every candidate: its own lowest keys stand for the merged
 * ones (no halo from other ranks).  Returns the hooks' code (KV_OK for a
 * method without them). */
int kv_test_decide(const kv_method_ops *ops, void *st, int64_t x, int at_query);

#endif
