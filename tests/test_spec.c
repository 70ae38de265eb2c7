/* test_spec.c - the --methods parser, the methods' parameter tables
 * (defaults, validation messages, parse-once) and kvstream methods. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "methods/method.h"
#include "methods/subgen.h"
#include "core/spec.h"
#include "testutil.h"

static int parses(const char *s) { kv_spec *x; int n; kv_err e = { 0, "" }; int rc = kv_spec_parse_list(s, &x, &n, &e); if (!rc) free(x); return rc; }

static kv_method_ctx ctx_for(const char *method)
{
    kv_method_ctx c = { .d = 4, .dv = 3, .scale = 0.5, .n_total = 1000, .nranks = 1, .shard_tokens = 1000,
                        .seed = 11, .window = 80 }; /* window: an unmasked-window case's W */
    const kv_method_ops *ops = kv_method_find(method); /* the semantics its conformance cases need */
    c.semantics = ops ? ops->conform.semantics : KV_SEM_FULL;
    return c;
}

/* parse text (one method) and check it; the message in err */
static int check_one(const char *text, kv_spec **sp, kv_err *err)
{
    int n = 0;
    *sp = NULL;
    kv_err_clear(err);
    if (kv_spec_parse_list(text, sp, &n, err)) return err->code;
    kv_method_ctx c = ctx_for((*sp)[0].method);
    return kv_method_check_specs(*sp, n, &c, err);
}

static int rejects(const char *text, const char *want1, const char *want2)
{
    kv_spec *sp;
    kv_err e;
    int rc = check_one(text, &sp, &e);
    free(sp);
    int ok = rc == KV_EINPUT && strstr(e.msg, want1) && (!want2 || strstr(e.msg, want2)) && !strchr(e.msg, '\n');
    if (!ok) fprintf(stderr, "  '%s' gave %d: %s\n", text, rc, e.msg);
    return ok;
}

/* both specs parse to the same config bytes */
static int same_cfg(const char *a, const char *b)
{
    kv_spec *x, *y;
    kv_err e1, e2;
    int ra = check_one(a, &x, &e1), rb = check_one(b, &y, &e2), same = 0;
    if (!ra && !rb) {
        const kv_method_ops *ops = kv_method_find(x[0].method);
        same = x[0].cfg_of == ops && y[0].cfg_of == ops && !memcmp(x[0].cfg, y[0].cfg, ops->cfg_size);
    } else {
        fprintf(stderr, "  %s: %s / %s: %s\n", a, e1.msg, b, e2.msg);
    }
    free(x);
    free(y);
    return same;
}

/* create from sp on ctx, feed n tokens, save: the state's bytes */
static int state_bytes(kv_spec *sp, kv_buf *out)
{
    const kv_method_ops *ops = kv_method_find(sp->method);
    kv_method_ctx c = ctx_for(sp->method);
    kv_err e = { 0, "" };
    void *st = NULL;
    kv_buf_init(out);
    if (!ops || ops->create(sp, &c, &st, &e)) { CHECK(0, "%s: %s", sp->text, e.msg); return 0; }
    float K[40 * 4], V[40 * 3];
    for (int i = 0; i < 40 * 4; i++) K[i] = (float)((i * 37) % 11) * 0.25f;
    for (int i = 0; i < 40 * 3; i++) V[i] = (float)((i * 13) % 7) * 0.5f - 1.0f;
    int rc = ops->ingest(st, K, V, 0, 40, &e);
    ops->save(st, out);
    kv_buf_put_i64(out, ops->max_bytes(st));
    ops->free(st);
    return rc == KV_OK && !out->failed;
}

typedef struct { int64_t a; double x; } toy_cfg;
static const kv_param_def toy_params[] = {
    KV_PARAM_INT_REQUIRED(toy_cfg, a, -5, 5, "required int"),
    KV_PARAM_DOUBLE_REQUIRED(toy_cfg, x, 0.5, 2.0, "required number"),
    KV_PARAM_TABLE_END
};

static void test_tables(void)
{
    /* defaults: the bare spec means the spec with every default written out */
    CHECK(same_cfg("window", "window:W=1024"), "window W default");
    CHECK(!same_cfg("window", "window:W=1023"), "window configs compare");
    CHECK(same_cfg("sinks", "sinks:S=4,W=1020"), "sinks defaults");
    CHECK(same_cfg("h2o", "h2o:tokens=1024,recent=512"), "h2o defaults");
    CHECK(same_cfg("h2o:tokens=10", "h2o:tokens=10,recent=5"), "h2o recent = budget/2");
    CHECK(same_cfg("uniform", "uniform:tokens=1024"), "uniform default");
    CHECK(same_cfg("topk", "topk:k=64"), "topk default");
    /* t is derived (16, or joint=1's budget rule): its default is a sentinel, not t=16 */
    CHECK(same_cfg("subgen", "subgen:delta=1,s=256,index=1,joint=0"), "subgen defaults");
    CHECK(!same_cfg("subgen", "subgen:t=16"), "subgen t default is derived");
    CHECK(same_cfg("window+subgen", "window+subgen:W=1024,delta=1,s=256,index=1"), "window+subgen defaults");
    CHECK(same_cfg("unmasked-window", "unmasked-window:name=u"), "unmasked-window default");
    kv_spec *sp;
    kv_err e;
    if (check_one("subgen", &sp, &e) == KV_OK) {
        const kv_subgen_cfg *c = (const kv_subgen_cfg *)sp[0].cfg;
        CHECK(c->delta == 1.0 && c->t == -1 && c->s == 256 && c->seed == -1 && c->index == 1,
              "subgen defaults %g %lld %lld %lld %lld", c->delta, (long long)c->t, (long long)c->s,
              (long long)c->seed, (long long)c->index);
    } else CHECK(0, "subgen: %s", e.msg);
    free(sp);
    /* parameters that were required stay valid and mean the same */
    CHECK(same_cfg("subgen:delta=0.5,t=16,s=128", "subgen:s=128,t=16,delta=0.5,name=x"), "order and name=");

    /* rejections: one line, the spec as written, the method's parameters */
    const char *wl = "(window takes W=<int >= 1, default 1024>, budget=<budget %|bytes|tok, default none>, "
                     "store=<name f32|f16|kivi2|kivi4|kivi8|tq2|tq3|tq4, default f32>, name=<label>)";
    CHECK(rejects("window:X=3", "--methods: window:X=3: unknown parameter 'X' ", wl), "unknown");
    CHECK(rejects("window:W=0", "--methods: window:W=0: W=0 is out of range: W >= 1 ", wl), "range");
    CHECK(rejects("window:W=abc", "W='abc' is not an integer", wl), "not an integer");
    CHECK(rejects("window:W=1.5", "W='1.5' is not an integer", wl), "fraction");
    CHECK(rejects("subgen:delta=abc", "--methods: subgen:delta=abc: delta='abc' is not a number", "subgen takes "
                  "delta=<number >= 0, default 1>, t=<int 1..2^31-1, default 16>, s=<int 1..2^24, default 256>, "
                  "seed=<int >= 0, default --seed>, index=<int 0..1, default 1>, clusters=<int 1..2^40, default 1024>, "
                  "budget=<budget %|bytes|tok, default none>, estimator=<name paper|joint, default paper>, joint=<int 0..1, default 0>, name=<label>"), "not a number");
    CHECK(rejects("subgen:delta=inf", "is not a number", NULL), "inf");
    CHECK(rejects("subgen:s=16777217", "s=16777217 is out of range: 1 <= s <= 2^24", NULL), "closed range");
    CHECK(rejects("subgen:index=2", "out of range", NULL), "index");
    CHECK(rejects("uniform:seed=-1", "seed=-1 is out of range", "default --seed"), "sentinel is not a value");
    CHECK(rejects("h2o:tokens=10,recent=20", "--methods: h2o:tokens=10,recent=20: recent=20 exceeds tokens=10",
                  "h2o takes tokens="), "cross-parameter check");
    CHECK(rejects("exact:foo=1", "unknown parameter 'foo' (exact takes store=<name auto|f32|f16, default auto>, name=<label>)",
                  NULL), "exact");
    CHECK(rejects("topk:k=5,W=3", "unknown parameter 'W'", "topk takes k="), "topk");
    /* required parameters (no method has one today: a table of our own) */
    kv_spec *t = NULL;
    int n = 0;
    toy_cfg tc;
    kv_err_clear(&e);
    if (!kv_spec_parse_list("toy:a=3", &t, &n, &e)) {
        CHECK(kv_params_parse(toy_params, &t[0], &tc, &e) == KV_EINPUT && strstr(e.msg, "--methods: toy:a=3: x is "
              "required (toy takes a=<int -5..5, required>, x=<number 0.5..2, required>, name=<label>)"), "%s", e.msg);
        free(t);
    }
    kv_err_clear(&e);
    if (!kv_spec_parse_list("toy:x=1.25,a=-5", &t, &n, &e)) {
        CHECK(kv_params_parse(toy_params, &t[0], &tc, &e) == KV_OK && tc.a == -5 && tc.x == 1.25, "%s", e.msg);
        free(t);
    }
    kv_err_clear(&e);
    if (!kv_spec_parse_list("toy:x=3,a=0", &t, &n, &e)) {
        CHECK(kv_params_parse(toy_params, &t[0], &tc, &e) == KV_EINPUT && strstr(e.msg, "x=3 is out of range: "
              "0.5 <= x <= 2"), "%s", e.msg);
        free(t);
    }
    CHECK(kv_params_count(toy_params) == 2 && kv_params_count(NULL) == 0, "count");

    /* window+subgen: its own and SubGen's errors name the user's spec */
    const char *ws = "window+subgen:W=8,delta=1,t=0";
    CHECK(rejects(ws, "--methods: window+subgen:W=8,delta=1,t=0: t=0 is out of range: 1 <= t <= 2^31-1 "
                  "(window+subgen takes W=<int >= 1, default 1024>, delta=", NULL), "wsg range");
    CHECK(rejects("window+subgen:W=8,foo=2", "--methods: window+subgen:W=8,foo=2: unknown parameter 'foo'", NULL),
          "wsg unknown");
    CHECK(rejects("window+subgen:s=0", "window+subgen:s=0: s=0 is out of range", NULL), "wsg s");
    if (!kv_spec_parse_list("window+subgen:W=8,delta=2", &t, &n, &e)) {
        kv_method_ctx c = ctx_for("window+subgen");
        c.semantics = KV_SEM_WINDOW_UNMASKED;
        kv_err_clear(&e);
        CHECK(kv_method_check_specs(t, n, &c, &e) == KV_EINPUT &&
              !strncmp(e.msg, "--methods: window+subgen:W=8,delta=2: ", 38) && !strstr(e.msg, "subgen:delta"),
              "%s", e.msg);
        free(t);
    }
    CHECK(same_cfg("window+subgen:W=8,delta=0.5,t=4,s=4,seed=1,index=0", "window+subgen:W=8,delta=0.5,t=4,s=4,"
                   "seed=1,index=0,name=w"), "wsg");

    /* name= for every method */
    char names[512];
    snprintf(names, sizeof names, "%s", kv_method_names());
    int nm = 0;
    for (char *sv = NULL, *m = strtok_r(names, ", ", &sv); m; m = strtok_r(NULL, ", ", &sv), nm++) {
        char text[96];
        snprintf(text, sizeof text, "%s:name=lbl", m);
        kv_spec *x;
        int rc = check_one(text, &x, &e);
        CHECK(rc == KV_OK && !strcmp(x[0].label, "lbl"), "%s: %s", text, e.msg);
        free(x);
    }
    int nreg = 0;
    while (kv_method_at(nreg)) nreg++;
    CHECK(nm == nreg && nreg > 0, "%d method names, %d registered", nm, nreg);

    /* parse once: check_specs fills cfg; create reads it and never the
     * parameters again (here garbled after the check), also in a copy; on
     * every method's declared conformance cases that have parameters */
    char once[48][128];
    int nonce = 0;
    for (int i = 0; kv_method_at(i); i++) {
        const kv_method_ops *ops = kv_method_at(i);
        const char *c = ops->conform.spec;
        for (size_t len; c && nonce < 48; c += len + 1) {
            len = strcspn(c, ";");
            if (len) snprintf(once[nonce++], sizeof once[0], "%s:%.*s", ops->name, (int)len, c);
            if (!c[len]) break;
        }
    }
    CHECK(nonce >= nreg - 2, "%d cases with parameters for %d methods", nonce, nreg);
    for (int i = 0; i < nonce; i++) {
        kv_spec *a, *b;
        kv_err ea, eb;
        int ra = kv_spec_parse_list(once[i], &a, &n, &ea), rb = check_one(once[i], &b, &eb);
        CHECK(ra == KV_OK && rb == KV_OK, "%s: %s %s", once[i], ea.msg, eb.msg);
        if (ra || rb) continue;
        CHECK(b[0].cfg_of == kv_method_find(b[0].method), "%s: parsed", once[i]);
        for (int k = 0; k < b[0].np; k++) strcpy(b[0].p[k].val, "garbage");
        kv_spec copy = b[0];
        kv_buf fresh, parsed;
        int ok1 = state_bytes(&a[0], &fresh), ok2 = state_bytes(&copy, &parsed); /* a: parsed inside create */
        CHECK(ok1 && ok2 && fresh.len == parsed.len && !memcmp(fresh.data, parsed.data, fresh.len),
              "%s: state from the parsed spec differs (%zu vs %zu bytes)", once[i], parsed.len, fresh.len);
        kv_buf_free(&fresh);
        kv_buf_free(&parsed);
        /* the same garbled spec unparsed is refused: create really did not reparse above */
        copy.cfg_of = NULL;
        const kv_method_ops *ops = kv_method_find(copy.method);
        kv_method_ctx c = ctx_for(copy.method);
        void *st = NULL;
        kv_err eg = { 0, "" };
        CHECK(ops->create(&copy, &c, &st, &eg) == KV_EINPUT && st == NULL && strstr(eg.msg, "garbage"),
              "%s garbled: %s", once[i], eg.msg);
        if (st) ops->free(st);
        free(a);
        free(b);
    }
}

/* kvstream methods: every method, parameter, default and kind */
static void test_describe(void)
{
    FILE *f = tmpfile();
    CHECK(f != NULL, "tmpfile");
    if (!f) return;
    kv_methods_describe(f);
    long len = ftell(f);
    rewind(f);
    char *txt = calloc((size_t)len + 1, 1);
    CHECK(txt && fread(txt, 1, (size_t)len, f) == (size_t)len, "read back");
    fclose(f);
    if (!txt) return;
    const char *kinds[] = { "\nexact: ", "\neviction: ", "\nsampling: ", "\nsketch: ", "\noracle: " };
    for (int i = 0; i < 5; i++) CHECK(strstr(txt, kinds[i]) != NULL, "kind heading %s", kinds[i] + 1);
    char names[512];
    snprintf(names, sizeof names, "%s", kv_method_names());
    for (char *sv = NULL, *m = strtok_r(names, ", ", &sv); m; m = strtok_r(NULL, ", ", &sv)) {
        char key[64];
        snprintf(key, sizeof key, "\n  %-16s ", m);
        const char *at = strstr(txt, key);
        CHECK(at != NULL, "method %s not described", m);
        if (!at) continue;
        const kv_method_ops *ops = kv_method_find(m);
        const char *next = strstr(at + 1, "\n  "), *end = at + strlen(at);
        while (next && next[3] == ' ') next = strstr(next + 1, "\n  "); /* skip indented lines */
        if (next) end = next;
        CHECK(ops->summary && strstr(at, ops->summary) == at + strlen(key), "%s: summary", m);
        CHECK(strstr(at, "memory: ") && strstr(at, "memory: ") < end, "%s: memory line", m);
        if (!ops->budget) CHECK(strstr(at, "no budget") && strstr(at, "no budget") < end, "%s: says no budget", m);
        /* each parameter (sub-tables flattened), with its default */
        for (const kv_param_def *d = ops->params; d && d->type != KV_PT_END; d++) {
            const kv_param_def *leaf = d->type == KV_PT_TABLE ? d->sub : d;
            for (; leaf->type != KV_PT_END; leaf++) {
                char pk[64];
                snprintf(pk, sizeof pk, "\n      %-8s %-6s default ", leaf->name,
                         leaf->type == KV_PT_INT ? "int" : leaf->type == KV_PT_BUDGET ? "budget" : leaf->type == KV_PT_ENUM ? "name" : "number");
                const char *q = strstr(at, pk);
                CHECK(q && q < end && strstr(q, leaf->help) && strstr(q, leaf->help) < strchr(q + 1, '\n'),
                      "%s: parameter %s", m, leaf->name);
                if (d->type != KV_PT_TABLE) break;
            }
        }
        if (kv_params_count(ops->params) == 0)
            CHECK(strstr(at, "no parameters") && strstr(at, "no parameters") < end, "%s: no parameters", m);
    }
    CHECK(strstr(txt, "W        int    default 1024") && strstr(txt, "delta    number default 1 ") &&
          strstr(txt, "s        int    default 256") && strstr(txt, "recent   int    default tokens/2") &&
          strstr(txt, "seed     int    default --seed") && strstr(txt, "name=<label>"), "defaults shown:\n%s", txt);
    free(txt);
}

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
    test_tables();
    test_describe();
    int rc = kv_test_result("test_spec");
    MPI_Finalize();
    return rc;
}
