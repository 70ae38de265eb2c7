/* spec.h - method specification strings and parameter tables.
 *
 * A --methods list is comma separated; a token without '=' starts a new
 * method, tokens with '=' are parameters of the method before them:
 *     exact,subgen:delta=0.5,t=16,s=128,name=sg,window:W=64
 * Every method accepts name=<label> (default: the spec text).
 *
 * Each method declares a table of its parameters (kv_param_def: name, type,
 * default, range, help, offset in the method's config struct).
 * kv_params_parse checks a spec against the table and fills the typed
 * config: unknown, missing required, out-of-range and non-numeric values are
 * rejected in one line naming the spec as written and listing the method's
 * parameters.  The config is kept inside the kv_spec (cfg, cfg_of), so a
 * spec is parsed once and every per-stream create() just reads it. */
#ifndef KVSTREAM_SPEC_H
#define KVSTREAM_SPEC_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "core/budget.h"
#include "core/kverr.h"

#define KV_SPEC_MAXP 16
#define KV_CFG_MAX 128 /* bytes of a method's typed config held in kv_spec */

typedef struct {
    char key[32];
    char val[64];
    int used;
} kv_param;

typedef struct {
    char method[32]; /* "exact", "subgen", "window+subgen" */
    char text[256];  /* the spec as written, e.g. "subgen:delta=0.5,t=16" */
    char label[64];  /* name=..., else text */
    int np;
    kv_param p[KV_SPEC_MAXP];
    /* The typed config parsed from p[] (src/methods: kv_method_parse), and
     * who parsed it (the method's kv_method_ops; NULL: not parsed yet).
     * Plain bytes: a kv_spec is still copied and freed as a value. */
    const void *cfg_of;
    _Alignas(max_align_t) unsigned char cfg[KV_CFG_MAX];
} kv_spec;

/* A method's config struct must fit in kv_spec.cfg. */
#define KV_CFG_FITS(T) _Static_assert(sizeof(T) <= KV_CFG_MAX, #T " does not fit in kv_spec.cfg (KV_CFG_MAX)")

/* Parse a comma-separated list; *out is malloc'ed (free with free()). */
int kv_spec_parse_list(const char *list, kv_spec **out, int *count, kv_err *err);

/* Append "key=value" to a parsed spec (its text grows; its label stays). */
int kv_spec_add_param(kv_spec *sp, const char *kv, kv_err *err);

/* The spec as text without its name=, then `extra` ("k=v,k=v", may be
 * NULL): the spec of a derived instance.  -1 if it does not fit in len. */
int kv_spec_format(const kv_spec *sp, const char *extra, char *out, size_t len);

/* ---- parameter tables ---------------------------------------------------- */

typedef enum {
    KV_PT_END = 0, /* ends a table */
    KV_PT_INT,     /* int64_t field */
    KV_PT_DOUBLE,  /* double field, finite */
    KV_PT_BUDGET,  /* kv_budget field (core/budget.h): 10%, 8MiB, 4096tok; default: none given */
    KV_PT_ENUM,    /* int64_t field: the index of a name in choices ("paper|joint") */
    KV_PT_TABLE    /* another table (sub) whose offsets are relative to offset */
} kv_param_type;

typedef struct kv_param_def {
    const char *name;
    kv_param_type type;
    int required;          /* no default: the spec must give it */
    int64_t idef, ilo, ihi; /* KV_PT_INT: default, range */
    double ddef, dlo, dhi;  /* KV_PT_DOUBLE */
    const char *def_text;  /* default shown when it is derived ("--seed"); the field then holds idef, a sentinel */
    const char *help;      /* one line */
    size_t offset;         /* of the field in the config struct */
    const struct kv_param_def *sub; /* KV_PT_TABLE */
    const char *choices;   /* KV_PT_ENUM: names separated by '|'; idef indexes the default */
} kv_param_def;

/* Table entries; the field must have the parameter's name and type (int64_t
 * or double: a mismatch does not compile). */
#define KV_PARAM_OFF_(T, f, type) _Generic(((T *)0)->f, type: offsetof(T, f))
#define KV_PARAM_INT(T, f, def, lo, hi, help_) \
    { .name = #f, .type = KV_PT_INT, .idef = (def), .ilo = (lo), .ihi = (hi), .help = (help_), \
      .offset = KV_PARAM_OFF_(T, f, int64_t) }
/* default computed later (by the method's check() or create()) from a
 * sentinel value outside [lo, hi]; shown as `shown` */
#define KV_PARAM_INT_DERIVED(T, f, sentinel, shown, lo, hi, help_) \
    { .name = #f, .type = KV_PT_INT, .idef = (sentinel), .def_text = (shown), .ilo = (lo), .ihi = (hi), \
      .help = (help_), .offset = KV_PARAM_OFF_(T, f, int64_t) }
#define KV_PARAM_INT_REQUIRED(T, f, lo, hi, help_) \
    { .name = #f, .type = KV_PT_INT, .required = 1, .ilo = (lo), .ihi = (hi), .help = (help_), \
      .offset = KV_PARAM_OFF_(T, f, int64_t) }
#define KV_PARAM_DOUBLE(T, f, def, lo, hi, help_) \
    { .name = #f, .type = KV_PT_DOUBLE, .ddef = (def), .dlo = (lo), .dhi = (hi), .help = (help_), \
      .offset = KV_PARAM_OFF_(T, f, double) }
#define KV_PARAM_DOUBLE_REQUIRED(T, f, lo, hi, help_) \
    { .name = #f, .type = KV_PT_DOUBLE, .required = 1, .dlo = (lo), .dhi = (hi), .help = (help_), \
      .offset = KV_PARAM_OFF_(T, f, double) }
/* one of the names in choices_ ("paper|joint"), stored as its index; def
 * is the index of the default */
#define KV_PARAM_ENUM(T, f, choices_, def, help_) \
    { .name = #f, .type = KV_PT_ENUM, .choices = (choices_), .idef = (def), .help = (help_), \
      .offset = KV_PARAM_OFF_(T, f, int64_t) }
/* every parameter of another table, into the struct member f */
/* budget=X (core/budget.h); kind KV_BUDGET_NONE when not given */
#define KV_PARAM_BUDGET(T, f, help_) \
    { .name = #f, .type = KV_PT_BUDGET, .def_text = "none", .help = (help_), \
      .offset = KV_PARAM_OFF_(T, f, kv_budget) }
#define KV_PARAM_INCLUDE(T, f, table) { .name = #f, .type = KV_PT_TABLE, .offset = offsetof(T, f), .sub = (table) }
#define KV_PARAM_TABLE_END { .type = KV_PT_END }

/* Set every field of cfg to its default, then read sp's parameters (all but
 * name=) into it.  defs may be NULL (no parameters).  Errors (KV_EINPUT):
 *   --methods: window:X=3: unknown parameter 'X' (window takes W=<int >= 1, default 1024>, name=<label>)
 * and likewise "S is required", "W=0 is out of range: W >= 1",
 * "W='abc' is not an integer", "delta='x' is not a number". */
int kv_params_parse(const kv_param_def *defs, kv_spec *sp, void *cfg, kv_err *err);

/* "W=<int >= 1, default 1024>, ..., name=<label>" into buf. */
void kv_params_usage(const kv_param_def *defs, char *buf, size_t len);

/* One line per parameter: indent, name, type, default, range, help. */
void kv_params_describe(const kv_param_def *defs, FILE *f, const char *indent);

/* Number of parameters (sub-tables flattened). */
int kv_params_count(const kv_param_def *defs);

/* An error about sp in the same form: "--methods: TEXT: MSG (METHOD takes ...)". */
int kv_params_error(const kv_param_def *defs, const kv_spec *sp, kv_err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- low-level readers (kept for callers without a table) --------------- */

/* Read a parameter.  Missing: *out = def, or an error if required.
 * Out of [lo, hi] or not a number: an error naming the spec and the key. */
int kv_spec_int(kv_spec *sp, const char *key, int required, int64_t def,
                int64_t lo, int64_t hi, int64_t *out, kv_err *err);
int kv_spec_double(kv_spec *sp, const char *key, int required, double def,
                   double lo, double hi, double *out, kv_err *err);

/* Error if a parameter was never read (unknown key). */
int kv_spec_finish(const kv_spec *sp, kv_err *err);

/* 1 if the spec gives parameter key (e.g. to refuse W= with budget=). */
int kv_spec_has(const kv_spec *sp, const char *key);

/* Mark every parameter unread again (cfg and cfg_of are kept). */
void kv_spec_reset(kv_spec *sp);

#endif
