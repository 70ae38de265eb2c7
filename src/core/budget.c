/* budget.c - see budget.h */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "core/budget.h"

static const struct { const char *unit; double mult; } units[] = {
    { "", 1 },           { "B", 1 },           { "KB", 1e3 },         { "MB", 1e6 },
    { "GB", 1e9 },       { "TB", 1e12 },       { "KiB", 1024.0 },     { "MiB", 1048576.0 },
    { "GiB", 1073741824.0 }, { "TiB", 1099511627776.0 }, { "K", 1024.0 }, { "M", 1048576.0 },
    { "G", 1073741824.0 },
};

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
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcasecmp(end, units[i].unit) && (units[i].unit[0] || 1)) {
            double bytes = v * units[i].mult;
            if (bytes < 1 || bytes > 9e18)
                return kv_seterr(err, KV_EINPUT, "budget '%s': %s bytes is out of range", s, bytes < 1 ? "under 1" : "over 2^63");
            *b = (kv_budget){ KV_BUDGET_BYTES, floor(bytes) };
            return KV_OK;
        }
    return kv_seterr(err, KV_EINPUT, "budget '%s': unknown unit '%s' (use %%, tok, B, KB, MB, GB, KiB, MiB, GiB)", s, end);
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
