/* test_buf.c - the checkpoint byte buffers (core/buf.h): a bounded buffer
 * hands the same bytes to its sink as a growable one keeps, never holding
 * more than its limit; a counting one gets the same total; put_saved's
 * length is the bytes' own; a refilling reader gives the bytes of an
 * in-memory one through a small window, sub-views included. */
#include <stdlib.h>
#include <string.h>
#include "core/buf.h"
#include "core/rng.h"
#include "testutil.h"

typedef struct {
    kv_buf all;   /* the pieces, in order */
    int bad_at;   /* a piece did not start where the last ended */
    int fail_after; /* > 0: the sink fails on that call */
    int calls;
} sink_ctx;

static int sink(void *ctx, const void *p, size_t n, size_t at)
{
    sink_ctx *c = ctx;
    c->calls++;
    if (c->fail_after && c->calls >= c->fail_after) return 1;
    if (at != c->all.len || n == 0) c->bad_at = 1;
    kv_buf_put(&c->all, p, n);
    return 0;
}

static uint64_t rng_state = 12345;
static uint64_t rnd(uint64_t n) { rng_state = kv_mix64(rng_state + 0x9e37); return rng_state % n; }

/* one random sequence of puts into every buffer in bs; returns the largest single put */
static size_t random_puts(kv_buf **bs, int nb, int count, const uint8_t *src)
{
    size_t biggest = 8;
    for (int i = 0; i < count; i++) {
        uint64_t kind = rnd(10);
        size_t n = kind < 6 ? (size_t)rnd(40) : kind < 9 ? (size_t)rnd(700) : (size_t)rnd(20000);
        size_t off = (size_t)rnd(30000 - n);
        int64_t v = (int64_t)rnd(1u << 30) - (1 << 29);
        for (int b = 0; b < nb; b++) {
            if (kind == 0) kv_buf_put_i64(bs[b], v);
            else if (kind == 1) kv_buf_put_f64(bs[b], (double)v / 3);
            else if (kind == 2) kv_buf_put_arr(bs[b], src + off, n);
            else kv_buf_put(bs[b], src + off, n);
        }
        if (n + 8 > biggest) biggest = n + 8;
    }
    return biggest;
}

static void test_bounded(void)
{
    uint8_t *src = malloc(30000);
    for (int i = 0; i < 30000; i++) src[i] = (uint8_t)rnd(256);
    const size_t limits[] = { 1, 3, 8, 64, 1000, 4096, 1 << 20 };
    for (size_t li = 0; li < sizeof limits / sizeof *limits; li++) {
        for (int trial = 0; trial < 20; trial++) {
            kv_buf whole, bounded, count;
            sink_ctx c;
            memset(&c, 0, sizeof c);
            kv_buf_init(&c.all);
            kv_buf_init(&whole);
            kv_buf_init_bounded(&bounded, limits[li], sink, &c);
            kv_buf_init_count(&count);
            kv_buf *bs[3] = { &whole, &bounded, &count };
            uint64_t seed = rng_state;
            size_t biggest = random_puts(bs, 3, 1 + (int)rnd(200), src);
            kv_buf_flush(&bounded);
            int same = !whole.failed && !bounded.failed && c.all.len == whole.len &&
                       (!whole.len || !memcmp(c.all.data, whole.data, whole.len));
            CHECK(same && !c.bad_at, "limit %zu, trial %d (seed %llu): the sink got %zu bytes, the whole buffer %zu%s",
                  limits[li], trial, (unsigned long long)seed, c.all.len, whole.len, c.bad_at ? ", out of order" : "");
            /* pieces are filled to the limit: at most limit held, and the
             * weaker bound the checkpoint relies on, limit + the largest put */
            CHECK(bounded.peak <= limits[li] && bounded.cap <= limits[li] && bounded.peak <= limits[li] + biggest,
                  "limit %zu: held %zu bytes (capacity %zu)", limits[li], bounded.peak, bounded.cap);
            CHECK(bounded.total == whole.len && whole.total == whole.len && count.total == whole.len && !count.data,
                  "totals: bounded %zu, whole %zu, counted %zu of %zu", bounded.total, whole.total, count.total,
                  whole.len);
            size_t full = whole.len / limits[li];
            CHECK(c.calls == (int)(full + (whole.len % limits[li] != 0)), "limit %zu: %d pieces for %zu bytes",
                  limits[li], c.calls, whole.len);
            kv_buf_free(&whole);
            kv_buf_free(&bounded);
            kv_buf_free(&c.all);
        }
    }
    /* a failing sink marks the buffer failed, and later puts do nothing */
    sink_ctx c;
    memset(&c, 0, sizeof c);
    c.fail_after = 2;
    kv_buf b;
    kv_buf_init_bounded(&b, 16, sink, &c);
    kv_buf_put(&b, src, 100);
    kv_buf_put(&b, src, 100);
    kv_buf_flush(&b);
    CHECK(b.failed && c.calls == 2, "failing sink: failed %d after %d calls", b.failed, c.calls);
    kv_buf_free(&b);
    kv_buf_free(&c.all);
    free(src);
}

/* put_saved: a length prefix that is the saved bytes' own, in every kind */
static int saves;
static void saver(const void *obj, kv_buf *out)
{
    const int *n = obj;
    for (int i = 0; i < *n; i++) kv_buf_put_i64(out, i);
    kv_buf_put(out, "xyz", 3);
}
static void unsteady(const void *obj, kv_buf *out)
{
    (void)obj;
    for (int i = 0; i <= saves; i++) kv_buf_put_i64(out, i);
    saves++;
}

static void test_saved(void)
{
    int n = 50;
    kv_buf whole, bounded, count, direct;
    sink_ctx c;
    memset(&c, 0, sizeof c);
    kv_buf_init(&whole);
    kv_buf_init(&direct);
    kv_buf_init_count(&count);
    kv_buf_init_bounded(&bounded, 5, sink, &c);
    kv_buf_put_saved(&whole, saver, &n);
    kv_buf_put_saved(&bounded, saver, &n);
    kv_buf_put_saved(&count, saver, &n);
    kv_buf_flush(&bounded);
    saver(&n, &direct);
    int64_t len = -1;
    if (whole.len >= 8) memcpy(&len, whole.data, 8);
    CHECK(!whole.failed && len == (int64_t)direct.len && whole.len == 8 + direct.len &&
              !memcmp(whole.data + 8, direct.data, direct.len),
          "put_saved: length %lld for %zu bytes", (long long)len, direct.len);
    CHECK(c.all.len == whole.len && !memcmp(c.all.data, whole.data, whole.len) && bounded.peak <= 5 &&
              count.total == whole.len, "put_saved bounded / counted: %zu, %zu of %zu", c.all.len, count.total, whole.len);
    kv_buf u;
    kv_buf_init(&u);
    kv_buf_put_saved(&u, unsteady, NULL);
    CHECK(u.failed, "a save that writes other bytes the second time fails the buffer");
    kv_buf_free(&u);
    kv_buf_free(&whole);
    kv_buf_free(&bounded);
    kv_buf_free(&direct);
    kv_buf_free(&c.all);
}

static int fills;
static int fill(void *ctx, void *dst, size_t n, size_t at, kv_err *err)
{
    (void)err;
    fills++;
    memcpy(dst, (const uint8_t *)ctx + at, n);
    return KV_OK;
}

/* a refilling reader against an in-memory one: the same bytes, sub-views
 * and errors; its window never holds more than wcap */
static void test_reader(void)
{
    size_t N = 5000;
    uint8_t *src = malloc(N), *a = malloc(N), *b = malloc(N);
    for (size_t i = 0; i < N; i++) src[i] = (uint8_t)rnd(256);
    const size_t wcaps[] = { 1, 7, 64, 10000 };
    for (size_t wi = 0; wi < sizeof wcaps / sizeof *wcaps; wi++) {
        kv_err err;
        kv_err_clear(&err);
        kv_rd_src s;
        CHECK(kv_rd_src_init(&s, N, wcaps[wi], fill, src, &err) == KV_OK, "src init: %s", err.msg);
        kv_rd mem = { .data = src, .len = N, .what = "t" }, rf = kv_rd_of_src(&s, "t");
        int bad = 0;
        while (mem.pos < mem.len && !bad) {
            size_t left = mem.len - mem.pos, n = (size_t)rnd(left < 300 ? left + 1 : 300);
            if (rnd(4) == 0) { /* a sub-view, read in two parts */
                kv_rd sm, sr;
                bad |= kv_rd_sub(&mem, n, &sm, &err) || kv_rd_sub(&rf, n, &sr, &err);
                size_t h = n / 2;
                bad |= kv_rd_get(&sm, a, h, &err) || kv_rd_get(&sr, b, h, &err) ||
                       kv_rd_get(&sm, a + h, n - h, &err) || kv_rd_get(&sr, b + h, n - h, &err);
                bad |= sr.pos != sr.len || kv_rd_get(&sr, b, 1, &err) != KV_EINPUT; /* past its end */
                kv_err_clear(&err);
            } else {
                bad |= kv_rd_get(&mem, a, n, &err) || kv_rd_get(&rf, b, n, &err);
            }
            bad |= memcmp(a, b, n) != 0 || mem.pos != rf.pos;
        }
        CHECK(!bad && rf.pos == N, "window %zu: the refilling reader differs at %zu: %s", wcaps[wi], rf.pos, err.msg);
        CHECK(s.peak <= wcaps[wi], "window %zu held %zu bytes", wcaps[wi], s.peak);
        kv_err_clear(&err);
        CHECK(kv_rd_get(&rf, a, 1, &err) == KV_EINPUT && strstr(err.msg, "truncated"), "reading past the end: %s",
              err.msg);
        kv_rd_src_free(&s);
    }
    /* an array read from the source lands in place, large reads bypass the window */
    kv_buf w;
    kv_buf_init(&w);
    kv_buf_put_arr(&w, src, N);
    kv_err err;
    kv_err_clear(&err);
    kv_rd_src s;
    kv_rd_src_init(&s, w.len, 16, fill, w.data, &err);
    kv_rd rf = kv_rd_of_src(&s, "t");
    void *p = NULL;
    size_t cnt = 0;
    fills = 0;
    CHECK(kv_rd_arr(&rf, &p, 1, N, &cnt, &err) == KV_OK && cnt == N && !memcmp(p, src, N) && fills <= 2,
          "array through a 16-byte window: %s, %d fills", err.msg, fills);
    free(p);
    kv_rd_src_free(&s);
    kv_buf_free(&w);
    free(src);
    free(a);
    free(b);
}

int main(void)
{
    test_bounded();
    test_saved();
    test_reader();
    return kv_test_result("test_buf");
}
