/* budget.h - one memory budget knob for every compression method.
 *
 * `--budget X` (the whole run) and `budget=X` (one method) take
 *     10%       a fraction of exact's memory for the stream: n * (d + dv) * 4 bytes
 *     8MiB 500KB 65536      bytes: a size (core/size.h; KiB = K = 2^10, KB = 10^3)
 *     4096tok   the memory of that many exact tokens: 4096 * (d + dv) * 4 bytes
 * A budget is per stream (one head's cache) and global: the method's peak
 * over all ranks together, whatever their number.  Each method turns the
 * bytes into its own parameters by the rule it documents. */
#ifndef KVSTREAM_BUDGET_H
#define KVSTREAM_BUDGET_H

#include <stdint.h>
#include "core/kverr.h"

typedef enum { KV_BUDGET_NONE = 0, KV_BUDGET_FRACTION, KV_BUDGET_BYTES, KV_BUDGET_TOKENS } kv_budget_kind;

typedef struct {
    int64_t kind;  /* kv_budget_kind (int64_t: the struct lives in method configs) */
    double value;  /* fraction in (0, 1], bytes >= 1, tokens >= 1 */
} kv_budget;

/* Parse s; errors (KV_EINPUT) say "budget 'X': <why>" into err. */
int kv_budget_parse(const char *s, kv_budget *b, kv_err *err);

/* The budget in bytes for a stream of n tokens with key/value dimensions d,
 * dv (0 for KV_BUDGET_NONE). */
int64_t kv_budget_bytes(const kv_budget *b, int64_t n, int d, int dv);

/* Bytes of one exact token: the unit of `%` and `tok`. */
static inline int64_t kv_budget_token_bytes(int d, int dv) { return (int64_t)(d + dv) * 4; }

#endif
