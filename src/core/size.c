/* size.c - see size.h */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <strings.h>
#include "core/size.h"

static const struct { const char *unit; double mult; } units[] = {
    { "", 1 },         { "B", 1 },
    { "K", 0x1p10 },   { "KiB", 0x1p10 }, { "KB", 1e3 },
    { "M", 0x1p20 },   { "MiB", 0x1p20 }, { "MB", 1e6 },
    { "G", 0x1p30 },   { "GiB", 0x1p30 }, { "GB", 1e9 },
    { "T", 0x1p40 },   { "TiB", 0x1p40 }, { "TB", 1e12 },
};

double kv_size_unit(const char *unit)
{
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcasecmp(unit, units[i].unit)) return units[i].mult;
    return 0;
}

int kv_size_parse(const char *s, int64_t *bytes, kv_err *err)
{
    char *end;
    if (!s || !*s) return kv_seterr(err, KV_EINPUT, "'' is empty, not a size (e.g. 512M, 4GiB, 500KB)");
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || isspace((unsigned char)*s))
        return kv_seterr(err, KV_EINPUT, "'%s' is not a size (e.g. 512M, 4GiB, 500KB)", s);
    double mult = kv_size_unit(end);
    if (!(mult > 0))
        return kv_seterr(err, KV_EINPUT, "'%s' has an unknown unit '%s' (B; K, M, G, T or KiB, MiB, GiB, TiB: "
                         "powers of 1024; KB, MB, GB, TB: powers of 1000)", s, end);
    if (!(v > 0)) return kv_seterr(err, KV_EINPUT, "'%s' is not a size: must be > 0", s);
    double b = floor(v * mult);
    if (b < 1 || b >= 0x1p63)
        return kv_seterr(err, KV_EINPUT, "'%s' is out of range (%s)", s, b < 1 ? "under 1 byte" : "2^63 bytes or more");
    *bytes = (int64_t)b;
    return KV_OK;
}
