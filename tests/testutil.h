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
/* max_i |a_i - b_i| / max(max_i |b_i|, tiny) */
double kv_test_relerr(const double *a, const double *b, int n);
#endif
