/* table.h - one results table of named, typed columns (sweep's /sweep,
 * pareto's /pareto; docs/RESULTS_FORMAT.md).
 *
 * A table is an array of the caller's row structs and a column list saying
 * which member goes to which dataset:
 *
 *     static const kv_col cols[] = {
 *         KV_COL(row, method, "method", KV_COL_STR),     (char method[64])
 *         KV_COL(row, memory, "memory_bytes", KV_COL_I64),
 *         KV_COL(row, p95, "p95_error", KV_COL_F64),
 *         { 0 } };
 *     kv_table_write(results, "/pareto", cols, rows, sizeof *rows, nr, err);
 *
 * Every column becomes one 1-D dataset of the group, in the row order.  The
 * replay's own summary table (replay/summary.c) can move onto the same
 * column lists later: one row struct per instance, one list for the
 * /methods attributes and the printed table. */
#ifndef KVSTREAM_STUDY_TABLE_H
#define KVSTREAM_STUDY_TABLE_H

#include <stddef.h>
#include "core/kverr.h"
#include "io/results.h"

typedef enum {
    KV_COL_END = 0,
    KV_COL_INT, /* int member, written as int64 */
    KV_COL_I64, /* int64_t member */
    KV_COL_F64, /* double member */
    KV_COL_STR  /* char[] member (NUL-terminated), written as strings */
} kv_col_type;

typedef struct {
    const char *name; /* the dataset; NULL ends a list */
    kv_col_type type;
    size_t off;       /* the member's offset in the row struct */
} kv_col;

#define KV_COL(rowtype, member, name, type) { name, type, offsetof(rowtype, member) }

/* Rank 0: group (created) with one dataset per column of nr rows, each
 * row_size bytes apart from rows.  Numeric columns of an empty table are
 * left out (HDF5 has no empty datasets here); string columns are kept. */
int kv_table_write(kv_results *r, const char *group, const kv_col *cols, const void *rows, size_t row_size, int nr,
                   kv_err *err);

#endif
