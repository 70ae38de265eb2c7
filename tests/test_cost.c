/* test_cost.c - the per-query cost hook (method.h: kv_query_cost) and the
 * driver's derivation without one (replay/cost.h), against what each
 * method's layout implies, on one rank: exact at n tokens reads n (d + dv) 4
 * bytes and does 2 n (d + dv) flops, a window of W tokens W (d + dv) 4,
 * uniform its k samples, topk every key and k values, h2o its held slots
 * (and its feedback re-reads the keys), and a method without a hook (kivi)
 * gets bytes(), kept_tokens and 2 (d + dv) flops per kept token. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/rng.h"
#include "kernels/partial.h"
#include "methods/method.h"
#include "replay/cost.h"
#include "testutil.h"

enum { N = 1000, D = 16, DV = 8 };

static float K[N * D], V[N * DV], Q[2 * D];

typedef struct {
    const kv_method_ops *ops;
    kv_spec *spec;
    void *st;
} inst;

static int make_(inst *x, const char *text);

/* a method that cannot be made is a failure, not a skipped check */
static int make(inst *x, const char *text)
{
    int bad = make_(x, text);
    CHECK(!bad, "%s: could not be made", text);
    return bad;
}

static int make_(inst *x, const char *text)
{
    kv_err err = { 0, "" };
    int cnt;
    kv_method_ctx ctx = { .d = D, .dv = DV, .scale = 0.25, .n_total = N, .rank = 0, .nranks = 1, .seed = 7,
                          .shard_tokens = N, .chunk = N, .semantics = KV_SEM_FULL };
    if (kv_spec_parse_list(text, &x->spec, &cnt, &err)) return fprintf(stderr, "%s: %s\n", text, err.msg), 1;
    x->ops = kv_method_find(x->spec[0].method);
    if (!x->ops || x->ops->create(&x->spec[0], &ctx, &x->st, &err)) return fprintf(stderr, "%s: %s\n", text, err.msg), 1;
    if (x->ops->horizon) x->ops->horizon(x->st, N);
    for (int64_t i = 0; i < N; i += 100)
        if (x->ops->ingest(x->st, K + i * D, V + i * DV, i, 100, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    /* the query position N: a deciding method (h2o) evicts to its budget first */
    if (kv_test_decide(x->ops, x->st, N, 1) != KV_OK) return fprintf(stderr, "%s: decide failed\n", text), 1;
    return 0;
}

static void drop(inst *x)
{
    x->ops->free(x->st);
    free(x->spec);
}

/* the counters' change over one partial call of nq queries at prefix N */
static kv_query_cost one_call(inst *x, int nq)
{
    kv_query_cost a = { 0, 0, 0 }, b = { 0, 0, 0 };
    double st[2 * KV_PSTATE_LEN(DV)];
    x->ops->cost(x->st, &a);
    CHECK(x->ops->partial(x->st, Q, nq, N, st) == KV_OK, "%s: partial", x->ops->name);
    x->ops->cost(x->st, &b);
    return (kv_query_cost){ b.read_bytes - a.read_bytes, b.read_tokens - a.read_tokens, b.flops - a.flops };
}

static void expect(const char *what, kv_query_cost c, double bytes, double tokens, double flops)
{
    CHECK(c.read_bytes == bytes, "%s: read_bytes %.17g, expected %.17g", what, c.read_bytes, bytes);
    CHECK(c.read_tokens == tokens, "%s: read_tokens %.17g, expected %.17g", what, c.read_tokens, tokens);
    CHECK(c.flops == flops, "%s: flops %.17g, expected %.17g", what, c.flops, flops);
}

int main(void)
{
    kv_rng r;
    kv_rng_seed(&r, 3, 1, 2);
    for (int i = 0; i < N * D; i++) K[i] = (float)kv_rng_normal(&r);
    for (int i = 0; i < N * DV; i++) V[i] = (float)kv_rng_normal(&r);
    for (int i = 0; i < 2 * D; i++) Q[i] = (float)kv_rng_normal(&r);
    const double row = 4.0 * (D + DV), fl = 2.0 * (D + DV);
    inst x;

    if (!make(&x, "exact")) {
        /* one query; two queries at one prefix share the read, not the work */
        expect("exact, 1 query", one_call(&x, 1), N * row, N, N * fl);
        expect("exact, 2 queries", one_call(&x, 2), N * row, 2.0 * N, 2 * N * fl);
        /* a batch at prefixes N/2 and N: the longest prefix read once */
        kv_query_cost a, b;
        int64_t p[2] = { N / 2, N };
        double st[2 * KV_PSTATE_LEN(DV)];
        x.ops->cost(x.st, &a);
        CHECK(x.ops->partial_batch(x.st, Q, p, 2, st) == KV_OK, "exact: partial_batch");
        x.ops->cost(x.st, &b);
        expect("exact, batch", (kv_query_cost){ b.read_bytes - a.read_bytes, b.read_tokens - a.read_tokens,
                                                b.flops - a.flops }, N * row, 1.5 * N, 1.5 * N * fl);
        drop(&x);
    }
    if (!make(&x, "window:W=64")) {
        expect("window W=64", one_call(&x, 1), 64 * row, 64, 64 * fl);
        drop(&x);
    }
    if (!make(&x, "sinks:S=4,W=60")) {
        expect("sinks S=4 W=60", one_call(&x, 1), 64 * row, 64, 64 * fl);
        drop(&x);
    }
    if (!make(&x, "uniform:tokens=100")) {
        expect("uniform k=100", one_call(&x, 1), 100 * row, 100, 100 * fl);
        drop(&x);
    }
    if (!make(&x, "topk:k=8")) {
        /* every key for the logits, the values of the k selected */
        expect("topk k=8", one_call(&x, 1), 4.0 * (N * D + 8 * DV), N, 2.0 * (N * D + 8 * DV));
        drop(&x);
    }
    if (!make(&x, "h2o:tokens=100,recent=50")) {
        expect("h2o 100 tokens", one_call(&x, 1), 100 * row, 100, 100 * fl);
        /* feedback: the held keys and scores again, for the logits */
        kv_query_cost a, b;
        double ml[2] = { 0.0, 1.0 };
        x.ops->cost(x.st, &a);
        CHECK(x.ops->feedback(x.st, Q, 1, N, ml) == KV_OK, "h2o: feedback");
        x.ops->cost(x.st, &b);
        expect("h2o feedback", (kv_query_cost){ b.read_bytes - a.read_bytes, b.read_tokens - a.read_tokens,
                                                b.flops - a.flops }, 100 * (4.0 * D + 16), 0, 100 * 2.0 * D);
        drop(&x);
    }
    if (!make(&x, "kivi:bits=4")) {
        /* the driver's derivation, whatever kivi's own hook says */
        kv_query_cost c = replay_cost_derived(x.ops, x.st, D, DV);
        kv_method_extra e = { -1, -1, 0 };
        x.ops->extra(x.st, &e);
        expect("kivi derived", c, (double)x.ops->bytes(x.st), (double)e.kept_tokens, (double)e.kept_tokens * fl);
        CHECK(e.kept_tokens == N, "kivi: kept %lld of %d tokens", (long long)e.kept_tokens, N);
        drop(&x);
    }
    return kv_test_result("test_cost");
}
