/* test_conformance.c - every registered method against its contract
 * (conform.h), from the registry: no list of methods here or anywhere.
 *
 * usage: test_conformance [I/N]
 *   I/N (0 <= I < N): only the methods at registry positions = I mod N,
 *   so that ctest can run the registry in N parts side by side; part 0
 *   also checks the checker (broken variants of the test tree's prefix
 *   method must be caught).
 * KV_CONFORM_ONLY=NAME checks that method alone; KV_CONFORM_CASE=TEXT only
 * the cases whose spec contains TEXT.
 *
 * Built with the files of tests/methods/, whose methods register themselves
 * (KV_TEST_METHOD): they are in the registry walked here like any other. */
#include <stdlib.h>
#include <string.h>
#include "conform.h"
#include "testutil.h"

extern const kv_method_ops kv_method_prefix; /* tests/methods/prefix.c */

/* ---- broken variants of prefix: the checker must report each ---- */

static int64_t half_max_bytes(const void *st) { return kv_method_prefix.max_bytes(st) / 2; }
static size_t double_bytes(const void *st) { return 2 * kv_method_prefix.bytes(st); }
static int64_t double_max_bytes(const void *st) { return 2 * kv_method_prefix.max_bytes(st); }

/* accepts a truncated state as if it were whole */
static int lax_load(void *st, kv_rd *in, kv_err *err)
{
    int rc = kv_method_prefix.load(st, in, err);
    return rc && strstr(err->msg, "truncated") ? KV_OK : rc;
}

/* run one part of the checker on a broken variant: it must fail, and
 * the last failure it reports must mention want */
#define EXPECT_FAIL(want, call) do {                                                                   \
        int before_ = kv_test_expected;                                                                \
        kv_test_last[0] = '\0';                                                                        \
        kv_test_expecting = 1;                                                                         \
        call;                                                                                          \
        kv_test_expecting = 0;                                                                         \
        CHECK(kv_test_expected > before_ && strstr(kv_test_last, want),                                \
              "the checker missed a broken method: %s (%d failures reported, last: %s)", #call,        \
              kv_test_expected - before_, kv_test_last);                                               \
    } while (0)

static void check_the_checker(void)
{
    const char *T = "prefix:T=50";
    kv_method_ops b = kv_method_prefix;
    b.max_bytes = half_max_bytes;
    EXPECT_FAIL("max_bytes", conform_checkpoints(&b, T, KV_SEM_FULL));

    b = kv_method_prefix;
    b.load = lax_load;
    EXPECT_FAIL("malformed-input test failed", conform_checkpoints(&b, T, KV_SEM_FULL));

    b = kv_method_prefix;
    b.bytes = double_bytes;
    b.max_bytes = double_max_bytes;
    EXPECT_FAIL("over the budget", conform_budget(&b));

    b = kv_method_prefix;
    b.save = NULL;
    EXPECT_FAIL("hook is missing", conform_hooks(&b));

    b = kv_method_prefix;
    b.conform.spec = NULL;
    EXPECT_FAIL("no .conform", conform_method(&b));

    /* balancekv merges and reduces per rank: declared P-invariant, it is caught */
    const kv_method_ops *h = kv_method_find("balancekv");
    CHECK(h != NULL, "balancekv is registered");
    if (h) {
        b = *h;
        b.conform.pinv = KV_PINV_ROUNDING;
        EXPECT_FAIL("declared P-invariant", conform_pinv(&b, "balancekv:tokens=200"));
    }
    printf("the checker catches broken methods: %d failures reported, as expected\n", kv_test_expected);
}

int main(int argc, char **argv)
{
    int part = 0, parts = 1;
    if (argc > 1 && (sscanf(argv[1], "%d/%d", &part, &parts) != 2 || parts < 1 || part < 0 || part >= parts)) {
        fprintf(stderr, "usage: test_conformance [I/N]\n");
        return 2;
    }
    const char *only = getenv("KV_CONFORM_ONLY");
    int n = 0;
    for (int i = 0; kv_method_at(i); i++) {
        const kv_method_ops *ops = kv_method_at(i);
        if (i % parts != part || (only && *only && strcmp(ops->name, only))) continue;
        printf("%s\n", ops->name);
        fflush(stdout);
        int bad = conform_method(ops);
        printf("%-52s %s\n", ops->name, bad ? "FAILED" : "conforms");
        n++;
    }
    CHECK(kv_method_find("prefix") != NULL, "the test tree's prefix method is not registered");
    if (part == 0 && !(only && *only)) check_the_checker();
    printf("%d methods checked\n", n);
    return kv_test_result("test_conformance");
}
