/* results.h - the replay results file (docs/RESULTS_FORMAT.md).
 *
 * Written by rank 0 only, with the serial HDF5 driver.  Datasets have the
 * query axis first after the stream axis ([S, m] or [S, m, dv]) or are 1-D
 * [m]; they are created up front and filled batch by batch with
 * kv_results_write_rows, so a run never keeps all outputs in memory. */
#ifndef KVSTREAM_RESULTS_H
#define KVSTREAM_RESULTS_H

#include <stdint.h>
#include "core/kverr.h"

typedef struct kv_results kv_results;

typedef enum { KV_R_F32, KV_R_F64, KV_R_I64 } kv_rtype;

kv_results *kv_results_create(const char *path, kv_err *err);
/* Reopen a results file for writing more rows (replay --resume). */
kv_results *kv_results_reopen(const char *path, kv_err *err);
/* Make everything written so far durable (checkpoints). */
int kv_results_flush(kv_results *r, kv_err *err);
/* Create a group (and parents), e.g. "/methods/exact". */
int kv_results_group(kv_results *r, const char *group, kv_err *err);
/* Attributes on a group ("/" for the root). */
int kv_results_attr_str(kv_results *r, const char *group, const char *name, const char *val, kv_err *err);
int kv_results_attr_i64(kv_results *r, const char *group, const char *name, int64_t val, kv_err *err);
int kv_results_attr_f64(kv_results *r, const char *group, const char *name, double val, kv_err *err);
/* Create dataset group/name of the given rank (1..3) and dims. */
int kv_results_dataset(kv_results *r, const char *group, const char *name, kv_rtype type, int rank,
                       const int64_t *dims, kv_err *err);
/* Write rows [j0, j0+cnt) of the query axis (axis 0 of rank-1, axis 1
 * otherwise); data is laid out like the selection, C order, in `type`. */
int kv_results_write_rows(kv_results *r, const char *group, const char *name, kv_rtype type, int64_t j0,
                          int64_t cnt, const void *data, kv_err *err);
/* Whole dataset in one call (create + write). */
int kv_results_write_all(kv_results *r, const char *group, const char *name, kv_rtype type, int rank,
                         const int64_t *dims, const void *data, kv_err *err);
/* A 1-D dataset of fixed-length strings (longest + 1 bytes). */
int kv_results_write_strings(kv_results *r, const char *group, const char *name, const char *const *strs,
                             int64_t n, kv_err *err);
int kv_results_close(kv_results *r, kv_err *err);

/* ---- reading back (e.g. pareto's statistics over a replay's groups) ---- */

/* The whole dataset group/name, converted to `type`, into *data (malloc'ed,
 * free with free()) of *count values in C order.  Works on a handle from
 * create or reopen; KV_EINPUT when the dataset is missing. */
int kv_results_read(kv_results *r, const char *group, const char *name, kv_rtype type, void **data, int64_t *count,
                    kv_err *err);
/* A scalar integer attribute of a group ("/" for the root). */
int kv_results_read_attr_i64(kv_results *r, const char *group, const char *name, int64_t *val, kv_err *err);
/* A scalar floating-point attribute of a group (KV_EINPUT when missing). */
int kv_results_read_attr_f64(kv_results *r, const char *group, const char *name, double *val, kv_err *err);

#endif
