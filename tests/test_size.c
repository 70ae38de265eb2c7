/* test_size.c - the one size grammar (core/size.h, docs/SIZES.md) as every
 * option reads it: kv_size_parse, budgets (core/budget.h) and the command
 * line's SIZE options (cmd/opts.h); and the results-table writer of the
 * experiments layer (study/table.h), written and read back. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cmd/opts.h"
#include "core/budget.h"
#include "core/size.h"
#include "study/table.h"
#include "testutil.h"

static const struct { const char *s; int64_t bytes; } good[] = {
    { "1", 1 }, { "65536", 65536 }, { "100B", 100 }, { "1.5K", 1536 }, { "0.5k", 512 },
    { "64K", 65536 }, { "64KiB", 65536 }, { "64kib", 65536 }, { "64KB", 64000 }, { "64kb", 64000 },
    { "512M", 536870912 }, { "512MiB", 536870912 }, { "512MB", 512000000 },
    { "4G", INT64_C(4294967296) }, { "4g", INT64_C(4294967296) }, { "4GiB", INT64_C(4294967296) },
    { "4GB", INT64_C(4000000000) }, { "2T", INT64_C(2199023255552) }, { "2TB", INT64_C(2000000000000) },
    { "2.9", 2 }, /* floor, as --max-memory and budget= always did */
};
static const char *const bad[] = { "", "lots", "4 G", " 4G", "4GiBs", "4Gb2", "0", "-1K", "0.5", "1e30", "nan",
                                   "4%", "10tok", "4XB" };

static void test_grammar(void)
{
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        kv_err e = { 0, "" };
        int64_t b = -1;
        CHECK(kv_size_parse(good[i].s, &b, &e) == KV_OK && b == good[i].bytes, "'%s': %lld (%s), want %lld", good[i].s,
              (long long)b, e.msg, (long long)good[i].bytes);
        /* a byte budget is the same size */
        kv_budget bu;
        kv_err e2 = { 0, "" };
        CHECK(kv_budget_parse(good[i].s, &bu, &e2) == KV_OK && bu.kind == KV_BUDGET_BYTES && bu.value == (double)good[i].bytes,
              "budget '%s': %g (%s)", good[i].s, bu.value, e2.msg);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kv_err e = { 0, "" };
        int64_t b = -1;
        CHECK(kv_size_parse(bad[i], &b, &e) == KV_EINPUT && b == -1, "'%s' accepted as %lld", bad[i], (long long)b);
        CHECK(!strchr(e.msg, '\n') && strstr(e.msg, bad[i]), "'%s': message '%s'", bad[i], e.msg);
    }
    /* budgets keep their own units beside sizes */
    kv_budget bu;
    kv_err e = { 0, "" };
    CHECK(!kv_budget_parse("10%", &bu, &e) && bu.kind == KV_BUDGET_FRACTION && fabs(bu.value - 0.1) < 1e-15, "10%%");
    CHECK(!kv_budget_parse("4096tok", &bu, &e) && bu.kind == KV_BUDGET_TOKENS && bu.value == 4096, "tok");
    CHECK(kv_budget_parse("4XB", &bu, &e) == KV_EINPUT && strstr(e.msg, "budget '4XB'") && strstr(e.msg, "tok"), "%s", e.msg);
}

/* --max-memory through the option tables: the same grammar, one line naming the option */
typedef struct { int64_t max_memory; } cli;
static const kv_opt table[] = {
    { "max-memory", 0, KV_OPT_SIZE, KV_AT(cli, max_memory), .meta = "SIZE", .help = "limit" },
    { 0 } };

static int parse_opt(const char *val, cli *c, kv_err *e)
{
    char *argv[] = { "replay", "--max-memory", (char *)val, NULL };
    kv_cmdline cl = { .cmd = "replay", .usage = "", .groups = { { NULL, table, c } } };
    int help = 0;
    kv_err_clear(e);
    return kv_opts_parse(&cl, 3, argv, NULL, NULL, &help, e);
}

static void test_options(void)
{
    cli c = { 0 };
    kv_err e = { 0, "" };
    CHECK(!parse_opt("4G", &c, &e) && c.max_memory == INT64_C(4294967296), "4G: %lld %s", (long long)c.max_memory, e.msg);
    CHECK(!parse_opt("4GB", &c, &e) && c.max_memory == INT64_C(4000000000), "4GB: %lld %s", (long long)c.max_memory, e.msg);
    CHECK(!parse_opt("512m", &c, &e) && c.max_memory == 536870912, "512m");
    CHECK(parse_opt("lots", &c, &e) == KV_EINPUT && strstr(e.msg, "replay: --max-memory: 'lots' is not a size") &&
          !strchr(e.msg, '\n'), "%s", e.msg);
    CHECK(parse_opt("4Q", &c, &e) == KV_EINPUT && strstr(e.msg, "--max-memory: '4Q' has an unknown unit 'Q'"), "%s", e.msg);
}

/* the table writer: typed columns from row structs, read back */
typedef struct { char name[16]; int flag; int64_t n; double x; } row;
static const kv_col cols[] = {
    KV_COL(row, name, "name", KV_COL_STR), KV_COL(row, flag, "flag", KV_COL_INT),
    KV_COL(row, n, "n", KV_COL_I64), KV_COL(row, x, "x", KV_COL_F64), { 0 } };

static void test_table(void)
{
    row rows[3] = { { "a", 1, 10, 0.5 }, { "bb", 0, -3, NAN }, { "ccc", 1, INT64_C(1) << 40, 1e300 } };
    char path[] = "/tmp/kv_test_table_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) return;
    close(fd);
    kv_err e = { 0, "" };
    kv_results *r = kv_results_create(path, &e);
    CHECK(r && !kv_table_write(r, "/t", cols, rows, sizeof *rows, 3, &e), "write: %s", e.msg);
    int64_t *n = NULL, *flag = NULL, cnt = 0, cf = 0;
    double *x = NULL;
    int64_t cx = 0;
    CHECK(r && !kv_results_read(r, "/t", "n", KV_R_I64, (void **)&n, &cnt, &e) && cnt == 3, "read n: %s", e.msg);
    CHECK(r && !kv_results_read(r, "/t", "flag", KV_R_I64, (void **)&flag, &cf, &e) && cf == 3, "read flag: %s", e.msg);
    CHECK(r && !kv_results_read(r, "/t", "x", KV_R_F64, (void **)&x, &cx, &e) && cx == 3, "read x: %s", e.msg);
    for (int i = 0; n && flag && x && i < 3; i++) {
        CHECK(n[i] == rows[i].n && flag[i] == rows[i].flag, "row %d: %lld %lld", i, (long long)n[i], (long long)flag[i]);
        CHECK(isnan(rows[i].x) ? isnan(x[i]) : x[i] == rows[i].x, "row %d: x %g", i, x[i]);
    }
    free(n); free(flag); free(x);
    if (r) kv_results_close(r, &e);
    remove(path);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    test_grammar();
    test_options();
    test_table();
    int rc = kv_test_result("test_size");
    MPI_Finalize();
    return rc;
}
