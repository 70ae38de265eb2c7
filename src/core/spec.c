/* spec.c - parse "method:key=val,key=val,method2" lists, and check them
 * against a method's parameter table. */
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/spec.h"

static int valid_name(const char *s)
{
    if (!*s) return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '+' && *s != '_' && *s != '-') return 0;
    return 1;
}

static int add_param(kv_spec *sp, const char *tok, kv_err *err)
{
    const char *eq = strchr(tok, '=');
    size_t klen = (size_t)(eq - tok);
    const char *val = eq + 1;
    if (klen == 0) return kv_seterr(err, KV_EINPUT, "method '%s': parameter '%s' has no name", sp->method, tok);
    if (!*val) return kv_seterr(err, KV_EINPUT, "method '%s': parameter '%.*s' has no value", sp->method, (int)klen, tok);
    if (klen >= sizeof sp->p[0].key || strlen(val) >= sizeof sp->p[0].val)
        return kv_seterr(err, KV_EINPUT, "method '%s': parameter '%s' is too long", sp->method, tok);
    for (int i = 0; i < sp->np; i++)
        if (strlen(sp->p[i].key) == klen && !strncmp(sp->p[i].key, tok, klen))
            return kv_seterr(err, KV_EINPUT, "method '%s': parameter '%.*s' given twice", sp->method, (int)klen, tok);
    if (sp->np == KV_SPEC_MAXP) return kv_seterr(err, KV_EINPUT, "method '%s': too many parameters", sp->method);
    kv_param *p = &sp->p[sp->np++];
    memcpy(p->key, tok, klen);
    p->key[klen] = '\0';
    strcpy(p->val, val);
    p->used = 0;
    if (!strcmp(p->key, "name")) {
        if (strlen(val) >= sizeof sp->label || strchr(val, '/') || strchr(val, '.'))
            return kv_seterr(err, KV_EINPUT, "method '%s': name '%s' must be short and contain no '/' or '.'", sp->method, val);
        strcpy(sp->label, val);
        p->used = 1;
    }
    size_t tl = strlen(sp->text);
    if (tl + strlen(tok) + 2 >= sizeof sp->text) return kv_seterr(err, KV_EINPUT, "method '%s': spec too long", sp->method);
    snprintf(sp->text + tl, sizeof sp->text - tl, "%s%s", sp->np == 1 ? ":" : ",", tok);
    return KV_OK;
}

int kv_spec_add_param(kv_spec *sp, const char *kv, kv_err *err)
{
    if (!strchr(kv, '=')) return kv_seterr(err, KV_EINPUT, "method '%s': parameter '%s' needs key=value", sp->method, kv);
    return add_param(sp, kv, err);
}

int kv_spec_parse_list(const char *list, kv_spec **out, int *count, kv_err *err)
{
    *out = NULL;
    *count = 0;
    size_t len = strlen(list);
    if (len == 0) return kv_seterr(err, KV_EINPUT, "--methods: empty method list");
    char *buf = kv_malloc(len + 1, err);
    kv_spec *specs = kv_calloc(len / 2 + 1, sizeof *specs, err);
    if (!buf || !specs) { free(buf); free(specs); return err->code; }
    memcpy(buf, list, len + 1);
    int n = 0, rc = KV_OK;
    char *save = NULL;
    if (list[0] == ',' || list[len - 1] == ',' || strstr(list, ",,")) {
        rc = kv_seterr(err, KV_EINPUT, "--methods '%s': empty entry in list", list);
        goto done;
    }
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        char *eq = strchr(tok, '=');
        if (eq && (!colon || eq < colon)) { /* a parameter */
            if (n == 0) { rc = kv_seterr(err, KV_EINPUT, "--methods: parameter '%s' before any method name", tok); goto done; }
            if ((rc = add_param(&specs[n - 1], tok, err))) goto done;
            continue;
        }
        kv_spec *sp = &specs[n++];
        if (colon) *colon = '\0';
        if (!valid_name(tok) || strlen(tok) >= sizeof sp->method) {
            rc = kv_seterr(err, KV_EINPUT, "--methods: '%s' is not a method name", tok);
            goto done;
        }
        strcpy(sp->method, tok);
        strcpy(sp->text, tok);
        if (colon) {
            if (!strchr(colon + 1, '=')) {
                rc = kv_seterr(err, KV_EINPUT, "method '%s': parameter '%s' needs key=value", tok, colon + 1);
                goto done;
            }
            if ((rc = add_param(sp, colon + 1, err))) goto done;
        }
    }
    for (int i = 0; i < n; i++) {
        if (!specs[i].label[0]) {
            /* the label becomes an HDF5 group name: no '/'; long specs are
             * cut (two that then collide are caught below) */
            size_t L = strlen(specs[i].text);
            if (L >= sizeof specs[i].label) L = sizeof specs[i].label - 1;
            memcpy(specs[i].label, specs[i].text, L);
            specs[i].label[L] = '\0';
            for (char *c = specs[i].label; *c; c++) if (*c == '/') *c = '_';
        }
        for (int j = 0; j < i; j++)
            if (!strcmp(specs[i].label, specs[j].label)) {
                rc = kv_seterr(err, KV_EINPUT, "--methods: two methods are labelled '%s' (use name=...)", specs[i].label);
                goto done;
            }
    }
done:
    free(buf);
    if (rc) { free(specs); return rc; }
    *out = specs;
    *count = n;
    return KV_OK;
}

static kv_param *find(kv_spec *sp, const char *key);
int kv_spec_has(const kv_spec *sp, const char *key) { return find((kv_spec *)sp, key) != NULL; }

static kv_param *find(kv_spec *sp, const char *key)
{
    for (int i = 0; i < sp->np; i++)
        if (!strcmp(sp->p[i].key, key)) return &sp->p[i];
    return NULL;
}

int kv_spec_int(kv_spec *sp, const char *key, int required, int64_t def,
                int64_t lo, int64_t hi, int64_t *out, kv_err *err)
{
    kv_param *p = find(sp, key);
    if (!p) {
        if (required) return kv_seterr(err, KV_EINPUT, "method '%s': missing parameter %s=<integer>", sp->text, key);
        *out = def;
        return KV_OK;
    }
    p->used = 1;
    char *end;
    errno = 0;
    long long v = strtoll(p->val, &end, 10);
    if (errno || *end || end == p->val)
        return kv_seterr(err, KV_EINPUT, "method '%s': %s='%s' is not an integer", sp->text, key, p->val);
    if (v < lo || v > hi)
        return kv_seterr(err, KV_EINPUT, "method '%s': %s=%lld is out of range [%lld, %lld]", sp->text, key, v,
                         (long long)lo, (long long)hi);
    *out = v;
    return KV_OK;
}

int kv_spec_double(kv_spec *sp, const char *key, int required, double def,
                   double lo, double hi, double *out, kv_err *err)
{
    kv_param *p = find(sp, key);
    if (!p) {
        if (required) return kv_seterr(err, KV_EINPUT, "method '%s': missing parameter %s=<number>", sp->text, key);
        *out = def;
        return KV_OK;
    }
    p->used = 1;
    char *end;
    errno = 0;
    double v = strtod(p->val, &end);
    if (errno || *end || end == p->val || !isfinite(v))
        return kv_seterr(err, KV_EINPUT, "method '%s': %s='%s' is not a finite number", sp->text, key, p->val);
    if (v < lo || v > hi)
        return kv_seterr(err, KV_EINPUT, "method '%s': %s=%g is out of range [%g, %g]", sp->text, key, v, lo, hi);
    *out = v;
    return KV_OK;
}

int kv_spec_finish(const kv_spec *sp, kv_err *err)
{
    for (int i = 0; i < sp->np; i++)
        if (!sp->p[i].used)
            return kv_seterr(err, KV_EINPUT, "method '%s': unknown parameter '%s'", sp->text, sp->p[i].key);
    return KV_OK;
}

void kv_spec_reset(kv_spec *sp)
{
    for (int i = 0; i < sp->np; i++) sp->p[i].used = !strcmp(sp->p[i].key, "name");
}

/* ---- parameter tables ---------------------------------------------------- */

/* 2^k and 2^k-1 read better than their digits */
static void fmt_int(char *b, size_t n, int64_t v)
{
    if (v == INT64_MAX) { snprintf(b, n, "2^63-1"); return; }
    if (v >= 65536 && !(v & (v - 1))) { snprintf(b, n, "2^%d", __builtin_ctzll((unsigned long long)v)); return; }
    if (v >= 65535 && !((v + 1) & v)) { snprintf(b, n, "2^%d-1", __builtin_ctzll((unsigned long long)v + 1)); return; }
    snprintf(b, n, "%lld", (long long)v);
}

/* name number i of an enum's choices into b */
static void enum_name(const kv_param_def *d, int64_t i, char *b, size_t n)
{
    const char *c = d->choices;
    for (int64_t k = 0; k < i && c; k++) {
        c = strchr(c, '|');
        if (c) c++;
    }
    size_t len = c ? strcspn(c, "|") : 0;
    snprintf(b, n, "%.*s", (int)(len < n ? len : n - 1), c ? c : "");
}

/* index of val among an enum's choices, -1 if none */
static int64_t enum_index(const kv_param_def *d, const char *val)
{
    int64_t i = 0;
    size_t lv = strlen(val);
    for (const char *c = d->choices; c; i++) {
        size_t len = strcspn(c, "|");
        if (len == lv && !strncmp(c, val, len)) return i;
        c = c[len] ? c + len + 1 : NULL;
    }
    return -1;
}

static int open_hi(const kv_param_def *d)
{
    if (d->type == KV_PT_BUDGET) return 1;
    return d->type == KV_PT_INT ? d->ihi == INT64_MAX : d->dhi >= DBL_MAX;
}

static void fmt_bounds(const kv_param_def *d, char *lo, char *hi, size_t n)
{
    if (d->type == KV_PT_BUDGET) {
        snprintf(lo, n, "0");
        snprintf(hi, n, "100%%");
    } else if (d->type == KV_PT_INT) {
        fmt_int(lo, n, d->ilo);
        fmt_int(hi, n, d->ihi);
    } else {
        snprintf(lo, n, "%g", d->dlo);
        snprintf(hi, n, "%g", d->dhi);
    }
}

/* ">= 1" or "1..2^31-1" */
static void fmt_range(char *b, size_t n, const kv_param_def *d)
{
    if (d->type == KV_PT_BUDGET) { snprintf(b, n, "%%|bytes|tok"); return; }
    if (d->type == KV_PT_ENUM) { snprintf(b, n, "%s", d->choices); return; }
    char lo[32], hi[32];
    fmt_bounds(d, lo, hi, sizeof lo);
    if (open_hi(d)) snprintf(b, n, ">= %s", lo);
    else snprintf(b, n, "%s..%s", lo, hi);
}

/* "W >= 1" or "1 <= t <= 2^31-1" */
static void fmt_rule(char *b, size_t n, const kv_param_def *d)
{
    char lo[32], hi[32];
    fmt_bounds(d, lo, hi, sizeof lo);
    if (open_hi(d)) snprintf(b, n, "%s >= %s", d->name, lo);
    else snprintf(b, n, "%s <= %s <= %s", lo, d->name, hi);
}

static void fmt_default(char *b, size_t n, const kv_param_def *d)
{
    if (d->required) snprintf(b, n, "required");
    else if (d->def_text) snprintf(b, n, "%s", d->def_text);
    else if (d->type == KV_PT_ENUM) enum_name(d, d->idef, b, n);
    else if (d->type == KV_PT_INT) fmt_int(b, n, d->idef);
    else snprintf(b, n, "%g", d->ddef);
}

static const char *type_name(const kv_param_def *d)
{
    return d->type == KV_PT_INT ? "int" : d->type == KV_PT_BUDGET ? "budget" : d->type == KV_PT_ENUM ? "name" : "number";
}

/* calls fn on every leaf entry (sub-tables flattened) with its absolute offset */
typedef int (*leaf_fn)(const kv_param_def *d, size_t off, void *arg);
static int each_leaf(const kv_param_def *defs, size_t base, leaf_fn fn, void *arg)
{
    for (const kv_param_def *d = defs; d && d->type != KV_PT_END; d++) {
        int rc = d->type == KV_PT_TABLE ? each_leaf(d->sub, base + d->offset, fn, arg) : fn(d, base + d->offset, arg);
        if (rc) return rc;
    }
    return 0;
}

typedef struct { char *buf; size_t len; } usage_acc;
static int usage_one(const kv_param_def *d, size_t off, void *arg)
{
    (void)off;
    usage_acc *a = arg;
    char r[96], df[64];
    fmt_range(r, sizeof r, d);
    fmt_default(df, sizeof df, d);
    size_t l = strlen(a->buf);
    snprintf(a->buf + l, a->len - l, "%s=<%s %s, %s%s>, ", d->name, type_name(d), r, d->required ? "" : "default ",
             df);
    return 0;
}

void kv_params_usage(const kv_param_def *defs, char *buf, size_t len)
{
    if (!len) return;
    buf[0] = '\0';
    usage_acc a = { buf, len };
    each_leaf(defs, 0, usage_one, &a);
    size_t l = strlen(buf);
    snprintf(buf + l, len - l, "name=<label>");
}

static int count_one(const kv_param_def *d, size_t off, void *arg)
{
    (void)d;
    (void)off;
    ++*(int *)arg;
    return 0;
}

int kv_params_count(const kv_param_def *defs)
{
    int n = 0;
    each_leaf(defs, 0, count_one, &n);
    return n;
}

typedef struct { FILE *f; const char *indent; } desc_acc;
static int describe_one(const kv_param_def *d, size_t off, void *arg)
{
    (void)off;
    desc_acc *a = arg;
    char r[96], df[64];
    fmt_range(r, sizeof r, d);
    fmt_default(df, sizeof df, d);
    fprintf(a->f, "%s%-8s %-6s %s%-10s range %-13s %s\n", a->indent, d->name, type_name(d),
            d->required ? "" : "default ", df, r, d->help ? d->help : "");
    return 0;
}

void kv_params_describe(const kv_param_def *defs, FILE *f, const char *indent)
{
    desc_acc a = { f, indent };
    each_leaf(defs, 0, describe_one, &a);
}

static int vparams_error(const kv_param_def *defs, const kv_spec *sp, kv_err *err, const char *fmt, va_list ap)
{
    char msg[256], use[384];
    vsnprintf(msg, sizeof msg, fmt, ap);
    kv_params_usage(defs, use, sizeof use);
    return kv_seterr(err, KV_EINPUT, "--methods: %s: %s (%s takes %s%s)", sp->text, msg, sp->method,
                     kv_params_count(defs) ? "" : "only ", use);
}

int kv_params_error(const kv_param_def *defs, const kv_spec *sp, kv_err *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vparams_error(defs, sp, err, fmt, ap);
    va_end(ap);
    return rc;
}

static int set_default(const kv_param_def *d, size_t off, void *cfg)
{
    unsigned char *c = cfg;
    if (d->type == KV_PT_INT || d->type == KV_PT_ENUM) memcpy(c + off, &d->idef, sizeof(int64_t));
    else if (d->type == KV_PT_BUDGET) memcpy(c + off, &(kv_budget){ KV_BUDGET_NONE, 0 }, sizeof(kv_budget));
    else memcpy(c + off, &d->ddef, sizeof(double));
    return 0;
}

/* the leaf named key, and its absolute offset */
typedef struct { const char *key; const kv_param_def *d; size_t off; } find_acc;
static int find_one(const kv_param_def *d, size_t off, void *arg)
{
    find_acc *a = arg;
    if (strcmp(d->name, a->key)) return 0;
    a->d = d;
    a->off = off;
    return 1;
}

typedef struct { const kv_param_def *defs; kv_spec *sp; kv_err *err; } req_acc;
static int require_one(const kv_param_def *d, size_t off, void *arg)
{
    (void)off;
    req_acc *a = arg;
    if (!d->required || find(a->sp, d->name)) return 0;
    return kv_params_error(a->defs, a->sp, a->err, "%s is required", d->name);
}

int kv_params_parse(const kv_param_def *defs, kv_spec *sp, void *cfg, kv_err *err)
{
    each_leaf(defs, 0, set_default, cfg);
    for (int i = 0; i < sp->np; i++) {
        kv_param *p = &sp->p[i];
        if (!strcmp(p->key, "name")) continue;
        find_acc fa = { p->key, NULL, 0 };
        each_leaf(defs, 0, find_one, &fa);
        const kv_param_def *d = fa.d;
        if (!d) return kv_params_error(defs, sp, err, "unknown parameter '%s'", p->key);
        char *end, r[96];
        errno = 0;
        if (d->type == KV_PT_BUDGET) {
            kv_budget bu;
            kv_err e = { 0, "" };
            if (kv_budget_parse(p->val, &bu, &e)) return kv_params_error(defs, sp, err, "%s", e.msg);
            memcpy((unsigned char *)cfg + fa.off, &bu, sizeof bu);
        } else if (d->type == KV_PT_ENUM) {
            int64_t x = enum_index(d, p->val);
            if (x < 0) return kv_params_error(defs, sp, err, "%s='%s' is not one of %s", p->key, p->val, d->choices);
            memcpy((unsigned char *)cfg + fa.off, &x, sizeof x);
        } else if (d->type == KV_PT_INT) {
            long long v = strtoll(p->val, &end, 10);
            if (errno || *end || end == p->val)
                return kv_params_error(defs, sp, err, "%s='%s' is not an integer", p->key, p->val);
            if (v < d->ilo || v > d->ihi) {
                fmt_rule(r, sizeof r, d);
                return kv_params_error(defs, sp, err, "%s=%lld is out of range: %s", p->key, v, r);
            }
            int64_t x = v;
            memcpy((unsigned char *)cfg + fa.off, &x, sizeof x);
        } else {
            double v = strtod(p->val, &end);
            if (errno || *end || end == p->val || !isfinite(v))
                return kv_params_error(defs, sp, err, "%s='%s' is not a number", p->key, p->val);
            if (v < d->dlo || v > d->dhi) {
                fmt_rule(r, sizeof r, d);
                return kv_params_error(defs, sp, err, "%s=%s is out of range: %s", p->key, p->val, r);
            }
            memcpy((unsigned char *)cfg + fa.off, &v, sizeof v);
        }
        p->used = 1;
    }
    req_acc ra = { defs, sp, err };
    return each_leaf(defs, 0, require_one, &ra) ? err->code : KV_OK;
}

int kv_spec_format(const kv_spec *sp, const char *extra, char *out, size_t len)
{
    size_t o = (size_t)snprintf(out, len, "%s", sp->method);
    int np = 0;
    for (int i = 0; i < sp->np && o < len; i++)
        if (strcmp(sp->p[i].key, "name"))
            o += (size_t)snprintf(out + o, len - o, "%s%s=%s", np++ ? "," : ":", sp->p[i].key, sp->p[i].val);
    if (extra && *extra && o < len) o += (size_t)snprintf(out + o, len - o, "%s%s", np ? "," : ":", extra);
    return o < len ? KV_OK : -1;
}
