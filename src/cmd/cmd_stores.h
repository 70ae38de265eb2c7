/* cmd_stores.h - `kvstream pareto --stores f32,kivi4,tq3`: one method list
 * drawn at several storage formats (methods/store.h). */
#ifndef KVSTREAM_CMD_STORES_H
#define KVSTREAM_CMD_STORES_H

#include "core/kverr.h"

/* methods with every spec of a method taking store= (the evictors) written
 * once per entry of stores: "h2o" with "f32,kivi4" gives
 * "h2o,h2o:store=kivi4,name=h2o+kivi4" (f32 keeps the spec and its name;
 * a name= given is the base of the others').  Other specs are kept as
 * they are.  Returns a malloc'ed list, or NULL with err set (KV_EINPUT: an
 * unknown store, one given twice, a spec with store= of its own). */
char *kv_expand_stores(const char *methods, const char *stores, kv_err *err);

#endif
