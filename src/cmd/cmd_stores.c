/* cmd_stores.c - expand a method list over storage formats (cmd_stores.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cmd/cmd_stores.h"
#include "core/spec.h"
#include "methods/method.h"
#include "methods/common/store.h"

enum { MAX_STORES = 8 };

/* the index of name in KV_STORE_CHOICES, -1 if none */
static int store_index(const char *name, size_t len)
{
    const char *c = KV_STORE_CHOICES;
    for (int i = 0; *c; i++) {
        size_t n = strcspn(c, "|");
        if (n == len && !strncmp(c, name, len)) return i;
        c += n + (c[n] == '|');
    }
    return -1;
}

static int parse_stores(const char *list, int *idx, int *n, kv_err *err)
{
    *n = 0;
    for (const char *s = list;;) {
        size_t len = strcspn(s, ",");
        int k = store_index(s, len);
        if (k < 0)
            return kv_seterr(err, KV_EINPUT, "pareto: --stores: unknown store '%.*s' (stores: %s)", (int)len, s,
                             KV_STORE_CHOICES);
        for (int i = 0; i < *n; i++)
            if (idx[i] == k) return kv_seterr(err, KV_EINPUT, "pareto: --stores: '%.*s' given twice", (int)len, s);
        idx[(*n)++] = k;
        if (!s[len]) return KV_OK;
        s += len + 1;
    }
}

char *kv_expand_stores(const char *methods, const char *stores, kv_err *err)
{
    int idx[MAX_STORES], nst = 0, ns = 0;
    kv_spec *sp = NULL;
    if (parse_stores(stores, idx, &nst, err) || kv_spec_parse_list(methods, &sp, &ns, err)) return NULL;
    size_t cap = (size_t)ns * nst * 320 + 1, o = 0;
    char *out = calloc(cap, 1);
    if (!out) {
        free(sp);
        kv_seterr(err, KV_EINTERNAL, "pareto: out of memory expanding --stores");
        return NULL;
    }
    for (int i = 0; i < ns && !err->code; i++) {
        const kv_method_ops *ops = kv_method_find(sp[i].method);
        int takes = ops && kv_method_param(ops, "store") && strcmp(ops->name, "exact"); /* exact's store= is f32|f16 of the trace */
        if (takes && kv_spec_has(&sp[i], "store")) {
            kv_seterr(err, KV_EINPUT, "pareto: --methods: %s: store= comes from --stores", sp[i].text);
            break;
        }
        const char *base = kv_spec_has(&sp[i], "name") ? sp[i].label : sp[i].method;
        for (int k = 0; k < (takes ? nst : 1); k++) {
            char extra[160], one[320];
            if (o) out[o++] = ',';
            if (!takes || idx[k] == KV_STORE_F32) {
                o += (size_t)snprintf(out + o, cap - o, "%s", sp[i].text);
                continue;
            }
            snprintf(extra, sizeof extra, "store=%s,name=%s+%s", kv_store_name(idx[k]), base, kv_store_name(idx[k]));
            if (kv_spec_format(&sp[i], extra, one, sizeof one)) {
                kv_seterr(err, KV_EINPUT, "pareto: --stores: the spec of %s at store=%s is too long", sp[i].text,
                          kv_store_name(idx[k]));
                break;
            }
            o += (size_t)snprintf(out + o, cap - o, "%s", one);
        }
    }
    free(sp);
    if (err->code) {
        free(out);
        return NULL;
    }
    return out;
}
