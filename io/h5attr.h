/* h5attr.h - write scalar HDF5 attributes (numbers and fixed-length
 * strings), replacing an attribute of the same name; shared by the trace,
 * results and checkpoint writers, and (kv_h5_annotate) by layers that
 * annotate a file they wrote through io/. */
#ifndef KVSTREAM_H5ATTR_H
#define KVSTREAM_H5ATTR_H

#include <hdf5.h>
#include <stdint.h>
#include "core/kverr.h"

/* 0 on success, -1 on failure (HDF5 errors are silenced by the callers). */
int kv_h5_attr_scalar(hid_t obj, const char *name, hid_t file_type, hid_t mem_type, const void *val);
int kv_h5_attr_str(hid_t obj, const char *name, const char *val);

/* A root attribute for kv_h5_annotate: a string if s is set, else an int64
 * if is_int, else the double f. */
typedef struct {
    const char *name;
    double f;
    int64_t i;
    int is_int;
    const char *s;
} kv_h5_note;

/* Reopen the closed file at path (serially, one process), write n root
 * attributes (replacing any of the same name) and close it; for layers
 * above io/ that must not call HDF5 themselves (the generator's picks). */
int kv_h5_annotate(const char *path, const kv_h5_note *notes, int n, kv_err *err);

#endif
