/* budget.c - see budget.h */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "core/budget.h"
#include "core/size.h"

int kv_budget_parse(const char *s, kv_budget *b, kv_err *err)
{
    *b = (kv_budget){ KV_BUDGET_NONE, 0 };
    if (!s || !*s) return kv_seterr(err, KV_EINPUT, "budget '': empty (give e.g. 10%%, 8MiB, 500KB or 4096tok)");
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v))
        return kv_seterr(err, KV_EINPUT, "budget '%s': not a number with a unit (give e.g. 10%%, 8MiB, 4096tok)", s);
    if (v <= 0) return kv_seterr(err, KV_EINPUT, "budget '%s': must be > 0", s);
    if (!strcmp(end, "%")) {
        if (v > 100) return kv_seterr(err, KV_EINPUT, "budget '%s': more than 100%% of exact's memory", s);
        *b = (kv_budget){ KV_BUDGET_FRACTION, v / 100 };
        return KV_OK;
    }
    if (!strcmp(end, "tok")) {
        if (v < 1 || v != floor(v)) return kv_seterr(err, KV_EINPUT, "budget '%s': tokens must be a whole number >= 1", s);
        *b = (kv_budget){ KV_BUDGET_TOKENS, v };
        return KV_OK;
    }
    int64_t bytes; /* a size (core/size.h): 8MiB, 500KB, 65536 */
    kv_err e = { 0, "" };
    if (kv_size_parse(s, &bytes, &e))
        return kv_seterr(err, KV_EINPUT, "budget %s%s", e.msg, kv_size_unit(end) > 0 ? "" : " (or %, tok)");
    *b = (kv_budget){ KV_BUDGET_BYTES, (double)bytes };
    return KV_OK;
}

int64_t kv_budget_bytes(const kv_budget *b, int64_t n, int d, int dv)
{
    double tb = (double)kv_budget_token_bytes(d, dv), x;
    switch (b->kind) {
    case KV_BUDGET_FRACTION: x = floor(b->value * (double)n * tb); break;
    case KV_BUDGET_TOKENS: x = b->value * tb; break;
    case KV_BUDGET_BYTES: x = b->value; break;
    default: return 0;
    }
    return x > 9e18 ? INT64_MAX : (int64_t)x;
}
