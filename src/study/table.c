/* table.c - see table.h */
#include <stdint.h>
#include <stdlib.h>
#include "study/table.h"

static const char *member(const void *rows, size_t row_size, int i, size_t off)
{
    return (const char *)rows + (size_t)i * row_size + off;
}

/* one column: gathered from the rows into a contiguous array, then written */
static int write_col(kv_results *r, const char *group, const kv_col *c, const void *rows, size_t row_size, int nr,
                     kv_err *err)
{
    int64_t dims[1] = { nr };
    if (c->type == KV_COL_STR) {
        const char **s = kv_calloc(nr > 0 ? (size_t)nr : 1, sizeof *s, err);
        for (int i = 0; s && i < nr; i++) s[i] = member(rows, row_size, i, c->off);
        if (s) kv_results_write_strings(r, group, c->name, s, nr, err);
        free(s);
        return err->code;
    }
    if (nr <= 0) return KV_OK;
    if (c->type != KV_COL_INT && c->type != KV_COL_I64 && c->type != KV_COL_F64)
        return kv_seterr(err, KV_EINTERNAL, "table %s: column %s has no type", group, c->name);
    /* int64_t and double: both 8 bytes */
    char *v = kv_malloc((size_t)nr * 8, err);
    if (!v) return err->code;
    for (int i = 0; i < nr; i++) {
        const char *p = member(rows, row_size, i, c->off);
        if (c->type == KV_COL_INT) ((int64_t *)v)[i] = *(const int *)p;
        else if (c->type == KV_COL_I64) ((int64_t *)v)[i] = *(const int64_t *)p;
        else ((double *)v)[i] = *(const double *)p;
    }
    kv_results_write_all(r, group, c->name, c->type == KV_COL_F64 ? KV_R_F64 : KV_R_I64, 1, dims, v, err);
    free(v);
    return err->code;
}

int kv_table_write(kv_results *r, const char *group, const kv_col *cols, const void *rows, size_t row_size, int nr,
                   kv_err *err)
{
    if (kv_results_group(r, group, err)) return err->code;
    for (const kv_col *c = cols; c->name; c++)
        if (write_col(r, group, c, rows, row_size, nr, err)) return err->code;
    return KV_OK;
}
