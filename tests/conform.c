/* conform.c - conform_method (conform.h): hooks, parameters, budget and
 * P-invariance of a method's declared cases; checkpoints and max_bytes in
 * conform_ckpt.c. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "conform.h"
#include "core/budget.h"
#include "core/rng.h"
#include "emu.h"
#include "kernels/partial.h"
#include "testutil.h"

/* ---- small helpers ---- */

/* the emulated stream: d, dv, tokens, shard chunk (a multiple of every
 * group size a case names: kivi's groups must not straddle shards to be
 * P-invariant), queries per position */
enum { ED = 8, EDV = 6, EN = 600, EC = 160, ENQ = 3 };

/* "name" or "name:params" */
static void spec_text(char *out, size_t cap, const kv_method_ops *ops, const char *params, size_t len)
{
    snprintf(out, cap, "%s%s%.*s", ops->name, len ? ":" : "", (int)len, params);
}

/* parse text against ops (not looked up: ops may be outside the registry)
 * and create on ctx; the instance freed again */
static int try_create(const kv_method_ops *ops, const char *text, const kv_method_ctx *c, kv_err *err)
{
    kv_spec *sp = NULL;
    int n = 0;
    kv_err_clear(err);
    int rc = kv_spec_parse_list(text, &sp, &n, err);
    if (!rc) rc = kv_method_parse(ops, &sp[0], err);
    void *st = NULL;
    if (!rc) rc = ops->create(&sp[0], c, &st, err);
    if (st) ops->free(st);
    free(sp);
    return rc;
}

kv_method_ctx conform_ctx(int d, int dv, int64_t n, kv_semantics sem)
{
    kv_method_ctx c;
    memset(&c, 0, sizeof c);
    c.d = d;
    c.dv = dv;
    c.scale = 1.0 / sqrt((double)d);
    c.n_total = n;
    c.nranks = 1;
    c.shard_tokens = n;
    c.seed = 42;
    c.q_group = 5; /* query rows per position: up to 5 in the checkpoint schedule */
    c.semantics = sem;
    c.window = sem == KV_SEM_WINDOW_UNMASKED ? CONFORM_WINDOW : 0;
    return c;
}

/* ---- hooks ---- */

int conform_hooks(const kv_method_ops *o)
{
    int before = kv_test_found();
    const char *nm = o->name ? o->name : "(unnamed)";
    CHECK(o->name && *o->name && !strpbrk(o->name, ":,=; "), "%s: a name without : , = ; or spaces", nm);
    CHECK(o->kind && *o->kind && o->summary && *o->summary, "%s: kind and summary are required", nm);
    CHECK(o->create && o->ingest && o->partial && o->bytes && o->free && o->save && o->load && o->max_bytes,
          "%s: a required hook is missing (create, ingest, partial, bytes, free, save, load, max_bytes)", nm);
    CHECK(!o->select == !o->select_len && !o->select == !o->partial_select,
          "%s: select, select_len and partial_select come together", nm);
    CHECK(!o->decide_need == !o->decide_cands && !o->decide_need == !o->decide_apply && !o->decide_halo == !o->decide_halo_len &&
          (o->decide_need || !o->decide_halo),
          "%s: decide_need, decide_cands and decide_apply come together (decide_halo and its length with them)", nm);
    CHECK(o->cfg_size <= KV_CFG_MAX, "%s: config of %zu bytes > KV_CFG_MAX", nm, o->cfg_size);
    CHECK(!kv_method_takes_budget(o) || o->budget, "%s: takes budget= but .budget does not say what it bounds", nm);
    return kv_test_found() == before;
}

/* ---- parameters ---- */

/* the first parameter with a bound, and a value beyond it */
static const kv_param_def *ranged(const kv_param_def *d, char *val, size_t cap)
{
    for (; d && d->type != KV_PT_END; d++) {
        const kv_param_def *x = d->type == KV_PT_TABLE ? ranged(d->sub, val, cap) : NULL;
        if (x) return x;
        if (d->type == KV_PT_INT && d->ilo > INT64_MIN / 2) snprintf(val, cap, "%lld", (long long)d->ilo - 1);
        else if (d->type == KV_PT_INT && d->ihi < INT64_MAX / 2) snprintf(val, cap, "%lld", (long long)d->ihi + 1);
        else if (d->type == KV_PT_DOUBLE && d->dlo < d->dhi && isfinite(d->dlo))
            snprintf(val, cap, "%.17g", d->dlo - 1 - fabs(d->dlo));
        else continue;
        return d;
    }
    return NULL;
}

static void refused(const kv_method_ops *ops, const char *text, const char *want, kv_semantics sem)
{
    kv_method_ctx c = conform_ctx(ED, EDV, EN, sem);
    kv_err e;
    int rc = try_create(ops, text, &c, &e);
    CHECK(rc == KV_EINPUT && strstr(e.msg, text) && strstr(e.msg, want) && !strchr(e.msg, '\n'),
          "%s: want KV_EINPUT and one line naming the spec and \"%s\", got %d: %s", text, want, rc, e.msg);
}

void conform_params(const kv_method_ops *ops)
{
    char text[160], val[48];
    snprintf(text, sizeof text, "%s:nosuchparam=1", ops->name);
    refused(ops, text, "unknown parameter 'nosuchparam'", ops->conform.semantics);
    const kv_param_def *d = ranged(ops->params, val, sizeof val);
    if (!d) return; /* nothing bounded (exact) */
    snprintf(text, sizeof text, "%s:%s=%s", ops->name, d->name, val);
    refused(ops, text, "out of range", ops->conform.semantics);
}

/* ---- emulated ranks: budget and P-invariance ---- */


typedef struct {
    float K[EN * ED], V[EN * EDV], Q[EN * ED];
} edata;

static const edata *emu_data(void)
{
    static edata x;
    static int made;
    if (!made) {
        kv_rng r;
        kv_rng_seed(&r, 5, 6, 7);
        for (int i = 0; i < EN * ED; i++) x.K[i] = (float)(1.5 * kv_rng_normal(&r));
        for (int i = 0; i < EN * EDV; i++) x.V[i] = (float)(0.3 + kv_rng_normal(&r));
        for (int i = 0; i < EN * ED; i++) x.Q[i] = (float)kv_rng_normal(&r);
        made = 1;
    }
    return &x;
}

/* query positions: 1, then every 43 tokens (not a multiple of the chunk) */
static int64_t qpos(int i) { return i ? 43 * i : 1; }
enum { NPOS = EN / 43 + 1 };

/* the method of text on P ranks through the whole stream, as the driver
 * calls it; the outputs (NPOS * ENQ rows of EDV) into z, the peak of the
 * bytes summed over ranks into *worst; KV_EINPUT when create refuses */
static int drive(const kv_method_ops *ops, const char *text, kv_semantics sem, int P, double *z, size_t *worst,
                 kv_err *err)
{
    const edata *x = emu_data();
    kv_method_ctx base = conform_ctx(ED, EDV, EN, sem);
    emu e;
    kv_err_clear(err);
    if (emu_open_ops(&e, ops, text, &base, P, EC, err)) return err->code;
    size_t sl = KV_PSTATE_LEN(EDV);
    double st[ENQ * KV_PSTATE_LEN(EDV)];
    int L = ops->select ? ops->select_len(e.inst[0]) : 0;
    double *gsel = malloc(sizeof(double) * (size_t)(L > 0 ? L : 1) * ENQ);
    for (int i = 0; i < NPOS; i++) {
        int64_t p = qpos(i), ps[ENQ];
        const float *Q = x->Q + (size_t)i * ENQ * ED;
        emu_advance(&e, x->K, x->V, p);
        for (int q = 0; q < ENQ; q++) ps[q] = p;
        if (ops->select) emu_select(&e, Q, ps, ENQ, gsel, st);
        else emu_partial(&e, Q, ENQ, p, st);
        for (int q = 0; q < ENQ; q++) kv_partial_output(st + q * sl, EDV, z + ((size_t)i * ENQ + q) * EDV);
    }
    emu_advance(&e, x->K, x->V, EN);
    emu_end_epoch(&e);
    *worst = e.worst;
    free(gsel);
    emu_close(&e);
    return KV_OK;
}

void conform_budget(const kv_method_ops *ops)
{
    if (!kv_method_takes_budget(ops)) return;
    static double z[NPOS * ENQ * EDV];
    const char *fracs[] = { "10%", "25%", "50%", "100%" };
    for (int P = 1; P <= 3; P += 2) {
        int f = 0, rc = KV_EINPUT;
        size_t worst = 0;
        char text[96];
        kv_err e;
        for (; f < 4 && rc == KV_EINPUT; f++) { /* the smallest the method accepts on this stream */
            snprintf(text, sizeof text, "%s:budget=%s", ops->name, fracs[f]);
            rc = drive(ops, text, ops->conform.semantics, P, z, &worst, &e);
        }
        /* on several ranks a small stream's budget may not hold every
         * rank's fixed part: then a clean refusal naming the budget */
        if (P > 1 && rc == KV_EINPUT) {
            CHECK(strstr(e.msg, "budget") && !strchr(e.msg, '\n'), "%s: refused at P=%d without one line naming the "
                  "budget: %s", text, P, e.msg);
            continue;
        }
        CHECK(rc == KV_OK, "%s: refused at P=%d (budget= alone must make a valid spec): %s", text, P, e.msg);
        if (ops->conform.budget_reads) { /* a read budget (tests/test_quest.c checks the pages read) */
            printf("  %s: budget= bounds reads, not memory: accepted at P=%d, memory not compared\n", text, P);
            continue;
        }
        kv_budget b;
        kv_budget_parse(fracs[f - 1], &b, &e);
        int64_t B = kv_budget_bytes(&b, EN, ED, EDV);
        CHECK(rc || (int64_t)worst <= B, "%s: %zu bytes held on %d rank(s), over the budget of %lld", text, worst, P,
              (long long)B);
    }
}

/* outputs on P = 2, 3, 4 ranks against P = 1: what differs is the grouping
 * of float sums (tiles, the rank merge), a few float roundings (2^-24) of
 * the largest output per term: 1e-6 * max(1, |z|) leaves room for ~16 */
void conform_pinv(const kv_method_ops *ops, const char *text)
{
    if (ops->conform.pinv != KV_PINV_ROUNDING) return;
    enum { NZ = NPOS * ENQ * EDV };
    static double z1[NZ], zp[NZ];
    size_t worst;
    kv_err e;
    if (drive(ops, text, ops->conform.semantics, 1, z1, &worst, &e)) {
        CHECK(0, "%s: refused on 1 rank: %s", text, e.msg);
        return;
    }
    double zmax = 1;
    for (int i = 0; i < NZ; i++) zmax = fabs(z1[i]) > zmax ? fabs(z1[i]) : zmax;
    for (int P = 2; P <= EMU_MAXP; P++) {
        if (drive(ops, text, ops->conform.semantics, P, zp, &worst, &e)) {
            CHECK(0, "%s: refused on %d ranks: %s", text, P, e.msg);
            continue;
        }
        double diff = 0;
        for (int i = 0; i < NZ; i++) diff = fabs(zp[i] - z1[i]) > diff || isnan(zp[i]) ? fabs(zp[i] - z1[i]) : diff;
        CHECK(diff <= 1e-6 * zmax, "%s: declared P-invariant, but on %d ranks the outputs differ from 1 rank's by %.3g "
              "(tolerance %.3g)", text, P, diff, 1e-6 * zmax);
    }
}

/* ---- one method ---- */

int conform_method(const kv_method_ops *ops)
{
    int before = kv_test_found();
    const char *cases = ops->conform.spec;
    CHECK(cases != NULL, "%s: no .conform declaration (src/methods/method.h, docs/ADDING_A_METHOD.md)",
          ops->name ? ops->name : "(unnamed)");
    if (!cases || !conform_hooks(ops)) return kv_test_found() - before;
    conform_params(ops);
    conform_budget(ops);
    const char *only = getenv("KV_CONFORM_CASE"); /* e.g. "W=3": only the cases whose spec contains it */
    for (const char *c = cases;; c++) {
        size_t len = strcspn(c, ";");
        char text[256];
        spec_text(text, sizeof text, ops, c, len);
        if (!only || strstr(text, only)) {
            int b = kv_test_found();
            conform_checkpoints(ops, text, ops->conform.semantics);
            conform_pinv(ops, text);
            printf("  %-50s %s\n", text, kv_test_found() == b ? "ok" : "FAILED");
            fflush(stdout);
        }
        c += len;
        if (!*c) break;
    }
    return kv_test_found() - before;
}
