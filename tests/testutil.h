/* testutil.h - tiny assertion helpers for kvstream's C tests.
 * CHECK records a failure and goes on; tests return kv_test_result(). */
#ifndef KVSTREAM_TESTUTIL_H
#define KVSTREAM_TESTUTIL_H
#include <stdio.h>
#include "methods/method.h"

extern int kv_test_failures, kv_test_checks;

/* For tests of a checker that must find a fault (tests/test_conformance.c):
 * while kv_test_expecting is set, a failing CHECK counts in
 * kv_test_expected instead of kv_test_failures and prints "expected"
 * instead of FAIL.  kv_test_last holds the latest failure's message. */
extern int kv_test_expecting, kv_test_expected;
extern char kv_test_last[512];

void kv_test_fail(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define CHECK(cond, ...) do { kv_test_checks++; if (!(cond)) kv_test_fail(__FILE__, __LINE__, #cond, __VA_ARGS__); \
    } while (0)

/* failures so far, expected ones included */
static inline int kv_test_found(void) { return kv_test_failures + kv_test_expected; }

/* prints "N passed, N failed" and returns the exit status */
int kv_test_result(const char *name);
/* KV_TEST_PART=i/n in the environment (ctest runs the parts of a long test
 * binary side by side): is case k (0, 1, 2, ...) one of part i's, i.e.
 * k % n == i?  Without it every case is.  A malformed value is every case
 * of no part: the test then checks nothing and says so. */
int kv_test_part(int k);
/* max_i |a_i - b_i| / max(max_i |b_i|, tiny) */
double kv_test_relerr(const double *a, const double *b, int n);
/* Logits a[t] = scale <q, K[t]> (t < n, rows d wide) in double; returns the
 * largest rounding error of a float kernel's logit, max_t gamma_d scale
 * sum_c |q_c k_tc| + u |a_t| (a dot product in any order, then one product;
 * the attention kernels' bound, tests/test_attn_*.c). */
double kv_test_logits(const float *q, const float *K, size_t n, int d, float scale, double *a);
/* One instance of a deciding method (method.h: decide hooks) at point x,
 * as if it held every candidate: its own lowest keys stand for the merged
 * ones (no halo from other ranks).  Returns the hooks' code (KV_OK for a
 * method without them). */
int kv_test_decide(const kv_method_ops *ops, void *st, int64_t x, int at_query);

#endif
