/* opts.h - table-driven command-line options for every kvstream command.
 *
 * A command declares a static table of kv_opt (one row per option: long
 * name, optional short letter, value type, where the value goes, range,
 * help) and hands kv_opts_parse one or more such tables, each with the
 * struct its offsets refer to.  The same rows drive parsing (getopt_long:
 * "--name VALUE", "--name=VALUE", unambiguous abbreviations), validation
 * (one line naming the option: "replay: --batch: 0 is out of range
 * [1, 1048576]") and `kvstream CMD --help` / `-h`, which lists every
 * option with its default (the value in the struct before parsing, or the
 * row's `def` text) and its help.  A table can be shared between commands
 * (the generator options of gen and sweep are one table, kv_gen_opt_table
 * in cmd/cmd.h).
 *
 *   static const kv_opt table[] = {
 *       { "batch", 0, KV_OPT_INT, KV_AT(kv_replay_opts, batch), .lo = 1, .hi = 1 << 20,
 *         .meta = "B", .help = "queries per merge on rank 0" },
 *       { "quiet", 'q', KV_OPT_FLAG, KV_AT(kv_replay_opts, quiet), .lo = 1, .help = "no progress line" },
 *       { 0 } };
 */
#ifndef KVSTREAM_CMD_OPTS_H
#define KVSTREAM_CMD_OPTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "core/kverr.h"

typedef enum {
    KV_OPT_FLAG,    /* no value; stores .lo (an int) */
    KV_OPT_INT,     /* integer in [.lo, .hi]; field int, int64_t or uint64_t */
    KV_OPT_DOUBLE,  /* finite number; in [.dlo, .dhi] when .dlo < .dhi */
    KV_OPT_SIZE,    /* bytes, core/size.h: 123, 64K, 512MiB (powers of 1024), 500KB (of 1000); int64_t */
    KV_OPT_STRING,  /* const char * (points into argv) */
    KV_OPT_CHOICE,  /* one of .choices ("a|b|c"); stores its index (an int) */
    KV_OPT_INTLIST, /* "1,2,3", each in [.lo, .hi]; a kv_opt_list */
} kv_opt_type;

#define KV_OPT_LIST_MAX 64
typedef struct {
    int64_t v[KV_OPT_LIST_MAX];
    int n;
} kv_opt_list;

typedef struct {
    const char *name;     /* long name without "--"; NULL ends a table */
    char shortname;       /* 'o' for -o, 0: none ('h' is --help's) */
    kv_opt_type type;
    size_t off, size;     /* the field: KV_AT(struct, member) */
    int64_t lo, hi;       /* INT, INTLIST: range; FLAG: value stored */
    double dlo, dhi;      /* DOUBLE: range (ignored unless dlo < dhi) */
    const char *choices;  /* CHOICE: "full|window-unmasked-values" */
    const char *meta;     /* value placeholder in --help ("N", "FILE") */
    const char *def;      /* default shown in --help; NULL: the field's value before parsing */
    const char *help;     /* one line */
} kv_opt;

#define KV_AT(type, member) offsetof(type, member), sizeof(((type *)0)->member)

/* One table and the struct it stores into. */
typedef struct {
    const char *title;    /* --help heading; NULL: "options" */
    const kv_opt *opts;
    void *base;
} kv_opt_group;

enum { KV_OPT_GROUPS_MAX = 4 };

typedef struct {
    const char *cmd;       /* "replay": first word of every message */
    const char *usage;     /* after "usage: kvstream CMD ", e.g. "FILE [options]" */
    const char *about;     /* text under the usage line (may hold newlines) */
    const char *operand;   /* "trace file": exactly one operand required; NULL: none allowed */
    kv_opt_group groups[KV_OPT_GROUPS_MAX]; /* unused ones: opts NULL */
} kv_cmdline;

/* Parse argv[1..argc) (argv[0] is the command word).  On -h/--help, writes
 * the help to help_out (NULL: nowhere, e.g. ranks other than 0), sets
 * *help = 1 and returns KV_OK without checking anything else.  Otherwise
 * stores every option given, sets *operand (when c->operand) and returns
 * KV_OK, or KV_EINPUT with a one-line message in err. */
int kv_opts_parse(const kv_cmdline *c, int argc, char **argv, FILE *help_out, const char **operand, int *help,
                  kv_err *err);

#endif
