/* h5attr.h - write scalar HDF5 attributes (numbers and fixed-length
 * strings), replacing an attribute of the same name; shared by the trace,
 * results and checkpoint writers. */
#ifndef KVSTREAM_H5ATTR_H
#define KVSTREAM_H5ATTR_H

#include <hdf5.h>

/* 0 on success, -1 on failure (HDF5 errors are silenced by the callers). */
int kv_h5_attr_scalar(hid_t obj, const char *name, hid_t file_type, hid_t mem_type, const void *val);
int kv_h5_attr_str(hid_t obj, const char *name, const char *val);

#endif
