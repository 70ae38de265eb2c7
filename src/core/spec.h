/* spec.h - method specification strings.
 *
 * A --methods list is comma separated; a token without '=' starts a new
 * method, tokens with '=' are parameters of the method before them:
 *     exact,subgen:delta=0.5,t=16,s=128,name=sg,window:W=64
 * Every method accepts name=<label> (default: the spec text).  Methods read
 * their parameters with kv_spec_int / kv_spec_double, then kv_spec_finish
 * rejects keys nobody read, so typos never pass silently. */
#ifndef KVSTREAM_SPEC_H
#define KVSTREAM_SPEC_H

#include <stdint.h>
#include "core/kverr.h"

#define KV_SPEC_MAXP 16

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
} kv_spec;

/* Parse a comma-separated list; *out is malloc'ed (free with free()). */
int kv_spec_parse_list(const char *list, kv_spec **out, int *count, kv_err *err);

/* Read a parameter.  Missing: *out = def, or an error if required.
 * Out of [lo, hi] or not a number: an error naming the spec and the key. */
int kv_spec_int(kv_spec *sp, const char *key, int required, int64_t def,
                int64_t lo, int64_t hi, int64_t *out, kv_err *err);
int kv_spec_double(kv_spec *sp, const char *key, int required, double def,
                   double lo, double hi, double *out, kv_err *err);

/* Error if a parameter was never read (unknown key). */
int kv_spec_finish(const kv_spec *sp, kv_err *err);

/* Mark every parameter unread again (a spec is parsed once per stream). */
void kv_spec_reset(kv_spec *sp);

#endif
