/* spec.c - parse "method:key=val,key=val,method2" lists. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
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
