/* test_spec.c - the --methods parser and parameter checks. */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include "methods/method.h"
#include "core/spec.h"
#include "testutil.h"

static int parses(const char *s) { kv_spec *x; int n; kv_err e = { 0, "" }; int rc = kv_spec_parse_list(s, &x, &n, &e); if (!rc) free(x); return rc; }

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    kv_spec *sp;
    int n;
    kv_err e = { 0, "" };
    CHECK(kv_spec_parse_list("exact,subgen:delta=0.5,t=16,s=128,name=sg,window:W=64", &sp, &n, &e) == 0, "%s", e.msg);
    CHECK(n == 3, "n=%d", n);
    if (n == 3) {
        CHECK(!strcmp(sp[0].method, "exact") && !strcmp(sp[0].label, "exact"), "exact");
        CHECK(!strcmp(sp[1].method, "subgen") && sp[1].np == 4 && !strcmp(sp[1].label, "sg"), "subgen label %s", sp[1].label);
        CHECK(!strcmp(sp[1].text, "subgen:delta=0.5,t=16,s=128,name=sg"), "text %s", sp[1].text);
        CHECK(!strcmp(sp[2].label, "window:W=64"), "label %s", sp[2].label);
        int64_t W;
        double dl;
        kv_err e2 = { 0, "" };
        CHECK(kv_spec_int(&sp[2], "W", 1, 0, 1, 100, &W, &e2) == 0 && W == 64, "W");
        CHECK(kv_spec_finish(&sp[2], &e2) == 0, "finish");
        CHECK(kv_spec_double(&sp[1], "delta", 1, 0, 0, 10, &dl, &e2) == 0 && dl == 0.5, "delta");
        CHECK(kv_spec_finish(&sp[1], &e2) == KV_EINPUT && strstr(e2.msg, "unknown parameter 't'"), "unused key: %s", e2.msg);
        kv_err e3 = { 0, "" };
        CHECK(kv_spec_int(&sp[1], "t", 1, 0, 17, 100, &W, &e3) == KV_EINPUT && strstr(e3.msg, "out of range"), "%s", e3.msg);
        kv_err e4 = { 0, "" };
        CHECK(kv_spec_int(&sp[1], "missing", 1, 0, 0, 1, &W, &e4) == KV_EINPUT && strstr(e4.msg, "missing parameter"), "%s", e4.msg);
        kv_err e5 = { 0, "" };
        CHECK(kv_spec_int(&sp[1], "delta", 1, 0, 0, 1, &W, &e5) == KV_EINPUT && strstr(e5.msg, "not an integer"), "%s", e5.msg);
        free(sp);
    }
    CHECK(parses("") == KV_EINPUT, "empty list");
    CHECK(parses("W=3") == KV_EINPUT, "param before method");
    CHECK(parses("window:W=") == KV_EINPUT, "missing value");
    CHECK(parses("window:=3") == KV_EINPUT, "missing key");
    CHECK(parses("window:W=1,W=2") == KV_EINPUT, "duplicate key");
    CHECK(parses("exact,,exact") == KV_EINPUT, "empty entry");
    CHECK(parses("exact,exact") == KV_EINPUT, "duplicate label");
    CHECK(parses("exact,exact:name=e2") == 0, "distinct labels");
    CHECK(parses("exact:name=a/b") == KV_EINPUT, "slash in name");
    CHECK(parses("ex act") == KV_EINPUT, "bad method name");
    CHECK(parses("window:W") == KV_EINPUT, "param without =");
    /* registry */
    CHECK(kv_method_find("exact") != NULL, "exact registered");
    CHECK(kv_method_find("nosuch") == NULL, "unknown method");
    kv_method_ctx ctx = { .d = 4, .dv = 4, .scale = 0.5, .n_total = 10, .nranks = 1 };
    CHECK(kv_spec_parse_list("nosuch:x=1", &sp, &n, &e) == 0, "parse");
    kv_err e6 = { 0, "" };
    CHECK(kv_method_check_specs(sp, n, &ctx, &e6) == KV_EINPUT && strstr(e6.msg, "unknown method 'nosuch'"), "%s", e6.msg);
    free(sp);
    CHECK(kv_spec_parse_list("exact:foo=1", &sp, &n, &e) == 0, "parse");
    kv_err e7 = { 0, "" };
    CHECK(kv_method_check_specs(sp, n, &ctx, &e7) == KV_EINPUT && strstr(e7.msg, "unknown parameter 'foo'"), "%s", e7.msg);
    free(sp);
    int rc = kv_test_result("test_spec");
    MPI_Finalize();
    return rc;
}
