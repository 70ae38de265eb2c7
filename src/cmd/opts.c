/* opts.c - the option tables of opts.h: parsing, validation and --help. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cmd/opts.h"
#include "core/size.h"

enum { MAX_OPTS = 96, HELP_VAL = 'h', FIRST_VAL = 256 };

/* one row of the flattened tables */
typedef struct {
    const kv_opt *o;
    char *field;
} slot;

static int collect(const kv_cmdline *c, slot *s, kv_err *err)
{
    int n = 0;
    for (int g = 0; g < KV_OPT_GROUPS_MAX; g++)
        for (const kv_opt *o = c->groups[g].opts; o && o->name; o++) {
            if (n == MAX_OPTS) return -kv_seterr(err, KV_EINTERNAL, "%s: more than %d options", c->cmd, MAX_OPTS);
            s[n++] = (slot){ o, (char *)c->groups[g].base + o->off };
        }
    return n;
}

static int64_t get_int(const slot *s)
{
    if (s->o->size == sizeof(int)) return *(int *)s->field;
    return *(int64_t *)s->field;
}

static void set_int(const slot *s, int64_t v)
{
    if (s->o->size == sizeof(int)) *(int *)s->field = (int)v;
    else *(int64_t *)s->field = v;
}

static int parse_int(const char *cmd, const char *name, const char *arg, int64_t lo, int64_t hi, int64_t *out,
                     kv_err *err)
{
    char *end;
    errno = 0;
    long long v = strtoll(arg, &end, 10);
    if (errno || end == arg || *end) return kv_seterr(err, KV_EINPUT, "%s: --%s: '%s' is not an integer", cmd, name, arg);
    if (v < lo || v > hi)
        return kv_seterr(err, KV_EINPUT, "%s: --%s: %lld is out of range [%lld, %lld]", cmd, name, v, (long long)lo,
                         (long long)hi);
    *out = v;
    return KV_OK;
}

/* the n-th item (0-based) of "a|b|c" into buf; 0 if there is none */
static int choice_at(const char *choices, int n, char *buf, size_t len)
{
    const char *p = choices;
    for (int i = 0; i < n && p; i++) p = (p = strchr(p, '|')) ? p + 1 : NULL;
    if (!p) return 0;
    size_t k = strcspn(p, "|");
    snprintf(buf, len, "%.*s", (int)(k < len ? k : len - 1), p);
    return 1;
}

static int store(const char *cmd, const slot *s, const char *arg, kv_err *err)
{
    const kv_opt *o = s->o;
    char *end;
    int64_t v;
    switch (o->type) {
    case KV_OPT_FLAG:
        set_int(s, o->lo);
        return KV_OK;
    case KV_OPT_INT:
        if (parse_int(cmd, o->name, arg, o->lo, o->hi, &v, err)) return err->code;
        set_int(s, v);
        return KV_OK;
    case KV_OPT_DOUBLE: {
        errno = 0;
        double d = strtod(arg, &end);
        if (errno || end == arg || *end || !isfinite(d))
            return kv_seterr(err, KV_EINPUT, "%s: --%s: '%s' is not a finite number", cmd, o->name, arg);
        if (o->dlo < o->dhi && (d < o->dlo || d > o->dhi)) {
            if (isinf(o->dhi)) return kv_seterr(err, KV_EINPUT, "%s: --%s: %s must be >= %g", cmd, o->name, arg, o->dlo);
            return kv_seterr(err, KV_EINPUT, "%s: --%s: %s is out of range [%g, %g]", cmd, o->name, arg, o->dlo, o->dhi);
        }
        *(double *)s->field = d;
        return KV_OK;
    }
    case KV_OPT_SIZE: {
        kv_err e = { 0, "" };
        if (kv_size_parse(arg, (int64_t *)s->field, &e)) return kv_seterr(err, KV_EINPUT, "%s: --%s: %s", cmd, o->name, e.msg);
        return KV_OK;
    }
    case KV_OPT_STRING:
        *(const char **)s->field = arg;
        return KV_OK;
    case KV_OPT_CHOICE: {
        char buf[128], all[256] = "";
        size_t k = 0;
        for (int i = 0; choice_at(o->choices, i, buf, sizeof buf); i++) {
            if (!strcmp(buf, arg)) {
                *(int *)s->field = i;
                return KV_OK;
            }
            if (k < sizeof all) k += (size_t)snprintf(all + k, sizeof all - k, i ? ", %s" : "%s", buf);
        }
        return kv_seterr(err, KV_EINPUT, "%s: --%s: '%s' is not one of %s", cmd, o->name, arg, all);
    }
    case KV_OPT_INTLIST: {
        kv_opt_list *l = (kv_opt_list *)s->field;
        l->n = 0;
        for (const char *p = arg; *p;) {
            size_t k = strcspn(p, ",");
            if (k) {
                char item[64];
                if (l->n == KV_OPT_LIST_MAX)
                    return kv_seterr(err, KV_EINPUT, "%s: --%s: more than %d values", cmd, o->name, KV_OPT_LIST_MAX);
                snprintf(item, sizeof item, "%.*s", (int)(k < sizeof item ? k : sizeof item - 1), p);
                if (parse_int(cmd, o->name, item, o->lo, o->hi, &l->v[l->n], err)) return err->code;
                l->n++;
            }
            p += k + (p[k] == ',');
        }
        if (!l->n) return kv_seterr(err, KV_EINPUT, "%s: --%s: empty list", cmd, o->name);
        return KV_OK;
    }
    }
    return kv_seterr(err, KV_EINTERNAL, "%s: --%s: bad option type", cmd, o->name);
}

/* the field's current value as help shows it */
static void render(const slot *s, char *buf, size_t len)
{
    const kv_opt *o = s->o;
    buf[0] = '\0';
    if (o->def) {
        snprintf(buf, len, "%s", o->def);
        return;
    }
    switch (o->type) {
    case KV_OPT_FLAG: break;
    case KV_OPT_INT: snprintf(buf, len, "%lld", (long long)get_int(s)); break;
    case KV_OPT_DOUBLE: snprintf(buf, len, "%g", *(double *)s->field); break;
    case KV_OPT_SIZE: {
        int64_t v = *(int64_t *)s->field;
        if (v) snprintf(buf, len, "%lld", (long long)v);
        else snprintf(buf, len, "none");
        break;
    }
    case KV_OPT_STRING: {
        const char *v = *(const char **)s->field;
        snprintf(buf, len, "%s", v ? v : "none");
        break;
    }
    case KV_OPT_CHOICE: choice_at(o->choices, *(int *)s->field, buf, len); break;
    case KV_OPT_INTLIST: {
        const kv_opt_list *l = (const kv_opt_list *)s->field;
        size_t k = 0;
        for (int i = 0; i < l->n && k + 24 < len; i++) k += (size_t)snprintf(buf + k, len - k, i ? ",%lld" : "%lld", (long long)l->v[i]);
        if (!l->n) snprintf(buf, len, "none");
        break;
    }
    }
}

static void option_label(const kv_opt *o, char *buf, size_t len)
{
    const char *meta = o->meta;
    if (!meta) meta = o->type == KV_OPT_CHOICE ? o->choices : o->type == KV_OPT_INTLIST ? "N,N,..." : o->type == KV_OPT_SIZE ? "SIZE" : "X";
    char sh[8] = "";
    if (o->shortname) snprintf(sh, sizeof sh, "-%c, ", o->shortname);
    if (o->type == KV_OPT_FLAG) snprintf(buf, len, "%s--%s", sh, o->name);
    else snprintf(buf, len, "%s--%s %s", sh, o->name, meta);
}

static void help(const kv_cmdline *c, const slot *s, int n, char defs[][96], FILE *f)
{
    char label[128];
    int w = 10;
    for (int i = 0; i < n; i++) {
        option_label(s[i].o, label, sizeof label);
        int l = (int)strlen(label);
        if (l > w && l <= 30) w = l;
    }
    fprintf(f, "usage: kvstream %s %s\n", c->cmd, c->usage);
    if (c->about) fprintf(f, "%s\n", c->about);
    int i = 0, headed = 0;
    for (int g = 0; g < KV_OPT_GROUPS_MAX; g++) {
        if (!c->groups[g].opts || !c->groups[g].opts->name) continue;
        fprintf(f, "\n%s options:\n", c->groups[g].title ? c->groups[g].title : c->cmd);
        headed = 1;
        for (const kv_opt *o = c->groups[g].opts; o->name; o++, i++) {
            option_label(o, label, sizeof label);
            if ((int)strlen(label) > w) fprintf(f, "  %s\n  %-*s", label, w, "");
            else fprintf(f, "  %-*s", w, label);
            fprintf(f, "  %s", o->help);
            if (defs[i][0]) fprintf(f, " (default: %s)", defs[i]);
            fputc('\n', f);
        }
    }
    if (!headed) fprintf(f, "\noptions:\n");
    fprintf(f, "  %-*s  %s\n", w, "-h, --help", "print this help and exit");
}

int kv_opts_parse(const kv_cmdline *c, int argc, char **argv, FILE *help_out, const char **operand, int *want_help,
                  kv_err *err)
{
    slot s[MAX_OPTS];
    char defs[MAX_OPTS][96];
    struct option lo[MAX_OPTS + 2];
    char shorts[3 * MAX_OPTS + 8] = ":h";
    size_t ns = 2;
    *want_help = 0;
    int n = collect(c, s, err);
    if (n < 0) return err->code;
    for (int i = 0; i < n; i++) {
        const kv_opt *o = s[i].o;
        int arg = o->type == KV_OPT_FLAG ? no_argument : required_argument;
        lo[i] = (struct option){ o->name, arg, NULL, FIRST_VAL + i };
        if (o->shortname) {
            shorts[ns++] = o->shortname;
            if (arg == required_argument) shorts[ns++] = ':';
        }
        render(&s[i], defs[i], sizeof defs[i]); /* defaults, before anything is stored */
    }
    shorts[ns] = '\0';
    lo[n] = (struct option){ "help", no_argument, NULL, HELP_VAL };
    lo[n + 1] = (struct option){ 0, 0, 0, 0 };

    /* the first error is kept, but the scan goes on: -h/--help anywhere wins */
    kv_err first = { 0, "" };
    int ch;
    optind = 0; /* GNU: start afresh (the same process may parse twice) */
    opterr = 0;
    while ((ch = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        int k = -1;
        if (ch >= FIRST_VAL && ch < FIRST_VAL + n) k = ch - FIRST_VAL;
        else
            for (int i = 0; ch > 0 && ch < FIRST_VAL && i < n; i++)
                if (s[i].o->shortname == ch) k = i;
        if (ch == HELP_VAL) {
            if (help_out) help(c, s, n, defs, help_out);
            *want_help = 1;
            return KV_OK;
        }
        if (first.code) continue;
        if (ch == ':') kv_seterr(&first, KV_EINPUT, "%s: option %s needs a value", c->cmd, argv[optind - 1]);
        else if (k >= 0) store(c->cmd, &s[k], optarg, &first);
        else if (optopt > ' ' && optopt < 127) kv_seterr(&first, KV_EINPUT, "%s: unknown option '-%c'", c->cmd, optopt);
        else kv_seterr(&first, KV_EINPUT, "%s: unknown option '%s'", c->cmd, argv[optind - 1]);
    }
    if (first.code) return kv_seterr(err, first.code, "%s", first.msg);
    int left = argc - optind;
    if (c->operand) {
        if (left != 1) return kv_seterr(err, KV_EINPUT, "%s: expected exactly one %s (got %d)", c->cmd, c->operand, left);
        *operand = argv[optind];
    } else if (left > 0) {
        return kv_seterr(err, KV_EINPUT, "%s: unexpected argument '%s'", c->cmd, argv[optind]);
    }
    return KV_OK;
}
