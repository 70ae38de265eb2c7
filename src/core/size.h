/* size.h - the one size grammar of every kvstream option that takes bytes.
 *
 *     SIZE = NUMBER [UNIT]        (no space; NUMBER may have a fraction: 1.5GiB)
 *     no unit, B                  bytes
 *     K  M  G  T   KiB MiB GiB TiB     powers of 1024 (binary)
 *     KB MB GB TB                      powers of 1000 (decimal)
 * Units are case-insensitive (4g = 4G = 4GiB; 4gb = 4GB = 4e9).  The result
 * is floor(NUMBER x unit) bytes and must lie in [1, 2^63).  --max-memory,
 * --budget, budget= and pareto's --budgets all read sizes through here
 * (docs/SIZES.md). */
#ifndef KVSTREAM_SIZE_H
#define KVSTREAM_SIZE_H

#include <stdint.h>
#include "core/kverr.h"

/* Parse s (the whole string) into *bytes.  Errors (KV_EINPUT) say
 * "'X': <why>" into err; callers prefix what was being read. */
int kv_size_parse(const char *s, int64_t *bytes, kv_err *err);

/* Bytes of a unit ("", "B", "KiB", "kb", ...), 0 if it is not one. */
double kv_size_unit(const char *unit);

#endif
