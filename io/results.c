/* results.c - results file writer (rank 0, serial HDF5). */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/h5attr.h"
#include "io/results.h"

#define MAXDS 256

struct kv_results {
    char path[1024];
    hid_t file;
    int nds;
    struct { char name[192]; hid_t id; } ds[MAXDS]; /* open datasets by path */
};

static hid_t memtype(kv_rtype t)
{
    return t == KV_R_F32 ? H5T_NATIVE_FLOAT : t == KV_R_F64 ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64;
}

static hid_t filetype(kv_rtype t)
{
    return t == KV_R_F32 ? H5T_IEEE_F32LE : t == KV_R_F64 ? H5T_IEEE_F64LE : H5T_STD_I64LE;
}

kv_results *kv_results_create(const char *path, kv_err *err)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    kv_results *r = kv_calloc(1, sizeof *r, err);
    if (!r) return NULL;
    snprintf(r->path, sizeof r->path, "%s", path);
    r->file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (r->file < 0) {
        kv_seterr(err, KV_EINPUT, "%s: cannot create results file (directory missing or not writable?)", path);
        free(r);
        return NULL;
    }
    return r;
}

kv_results *kv_results_reopen(const char *path, kv_err *err)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    kv_results *r = kv_calloc(1, sizeof *r, err);
    if (!r) return NULL;
    snprintf(r->path, sizeof r->path, "%s", path);
    r->file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (r->file < 0) {
        kv_seterr(err, KV_EINPUT, "%s: cannot reopen the results file to resume (missing or corrupt)", path);
        free(r);
        return NULL;
    }
    return r;
}

int kv_results_flush(kv_results *r, kv_err *err)
{
    if (H5Fflush(r->file, H5F_SCOPE_GLOBAL) < 0) return kv_seterr(err, KV_EINTERNAL, "%s: flush failed (disk full?)", r->path);
    return KV_OK;
}

int kv_results_group(kv_results *r, const char *group, kv_err *err)
{
    /* a resumed run writes its summary into the groups an earlier run of it made */
    if (H5Lexists(r->file, group, H5P_DEFAULT) > 0) return KV_OK;
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(lcpl, 1);
    hid_t g = H5Gcreate2(r->file, group, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    H5Pclose(lcpl);
    if (g < 0) return kv_seterr(err, KV_EINTERNAL, "%s: cannot create group %s", r->path, group);
    H5Gclose(g);
    return KV_OK;
}

static int attr(kv_results *r, const char *group, const char *name, hid_t ftype, hid_t mtype, const void *val, kv_err *err)
{
    hid_t obj = H5Oopen(r->file, group, H5P_DEFAULT);
    if (obj < 0) return kv_seterr(err, KV_EINTERNAL, "%s: no group %s", r->path, group);
    int bad = kv_h5_attr_scalar(obj, name, ftype, mtype, val) < 0;
    H5Oclose(obj);
    if (bad) return kv_seterr(err, KV_EINTERNAL, "%s: cannot write attribute %s/%s", r->path, group, name);
    return KV_OK;
}

int kv_results_attr_str(kv_results *r, const char *group, const char *name, const char *val, kv_err *err)
{
    hid_t ty = H5Tcopy(H5T_C_S1);
    H5Tset_size(ty, strlen(val) + 1);
    H5Tset_strpad(ty, H5T_STR_NULLTERM);
    int rc = attr(r, group, name, ty, ty, val, err);
    H5Tclose(ty);
    return rc;
}

int kv_results_attr_i64(kv_results *r, const char *group, const char *name, int64_t val, kv_err *err)
{
    return attr(r, group, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &val, err);
}

int kv_results_attr_f64(kv_results *r, const char *group, const char *name, double val, kv_err *err)
{
    return attr(r, group, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &val, err);
}

static void join(char *full, size_t len, const char *group, const char *name)
{
    snprintf(full, len, "%s/%s", strcmp(group, "/") ? group : "", name);
}

/* an open dataset by path; datasets of a reopened file are opened lazily */
static hid_t find_ds(kv_results *r, const char *group, const char *name)
{
    char full[192];
    join(full, sizeof full, group, name);
    for (int i = 0; i < r->nds; i++)
        if (!strcmp(r->ds[i].name, full)) return r->ds[i].id;
    if (r->nds == MAXDS || H5Lexists(r->file, full, H5P_DEFAULT) <= 0) return -1;
    hid_t ds = H5Dopen2(r->file, full, H5P_DEFAULT);
    if (ds < 0) return -1;
    snprintf(r->ds[r->nds].name, sizeof r->ds[r->nds].name, "%s", full);
    r->ds[r->nds++].id = ds;
    return ds;
}

int kv_results_dataset(kv_results *r, const char *group, const char *name, kv_rtype type, int rank,
                       const int64_t *dims, kv_err *err)
{
    if (r->nds == MAXDS) return kv_seterr(err, KV_EINTERNAL, "%s: too many datasets", r->path);
    if (rank < 1 || rank > 3) return kv_seterr(err, KV_EINTERNAL, "%s: bad rank %d", r->path, rank);
    hsize_t hd[3], ch[3];
    for (int i = 0; i < rank; i++) {
        hd[i] = (hsize_t)dims[i];
        ch[i] = hd[i] ? hd[i] : 1;
    }
    /* chunk along the query axis so batches write whole chunks */
    int qa = rank == 1 ? 0 : 1;
    if (ch[qa] > 1024) ch[qa] = 1024;
    if (rank >= 2 && ch[0] > 1) ch[0] = 1;
    hid_t sp = H5Screate_simple(rank, hd, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (hd[qa] > 0) H5Pset_chunk(dcpl, rank, ch);
    /* all chunks allocated now: later row writes change no metadata, so a
     * file flushed at a checkpoint stays readable if the run dies after */
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY);
    char full[192];
    join(full, sizeof full, group, name);
    hid_t ds = H5Dcreate2(r->file, full, filetype(type), sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(sp);
    if (ds < 0) return kv_seterr(err, KV_EINTERNAL, "%s: cannot create dataset %s", r->path, full);
    snprintf(r->ds[r->nds].name, sizeof r->ds[r->nds].name, "%s", full);
    r->ds[r->nds++].id = ds;
    return KV_OK;
}

int kv_results_write_rows(kv_results *r, const char *group, const char *name, kv_rtype type, int64_t j0,
                          int64_t cnt, const void *data, kv_err *err)
{
    hid_t ds = find_ds(r, group, name);
    if (ds < 0) return kv_seterr(err, KV_EINTERNAL, "%s: dataset %s/%s not created", r->path, group, name);
    if (cnt <= 0) return KV_OK;
    hid_t fs = H5Dget_space(ds);
    int rank = H5Sget_simple_extent_ndims(fs);
    hsize_t dims[3], start[3] = { 0, 0, 0 }, count[3];
    H5Sget_simple_extent_dims(fs, dims, NULL);
    for (int i = 0; i < rank; i++) count[i] = dims[i];
    int qa = rank == 1 ? 0 : 1;
    start[qa] = (hsize_t)j0;
    count[qa] = (hsize_t)cnt;
    hid_t ms = H5Screate_simple(rank, count, NULL);
    int rc = KV_OK;
    if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dwrite(ds, memtype(type), ms, fs, H5P_DEFAULT, data) < 0)
        rc = kv_seterr(err, KV_EINTERNAL, "%s: writing %s/%s failed (disk full?)", r->path, group, name);
    H5Sclose(ms);
    H5Sclose(fs);
    return rc;
}

int kv_results_write_all(kv_results *r, const char *group, const char *name, kv_rtype type, int rank,
                         const int64_t *dims, const void *data, kv_err *err)
{
    /* a resumed run rewrites what an earlier run of it created */
    char full[192];
    join(full, sizeof full, group, name);
    for (int i = 0; i < r->nds; i++)
        if (!strcmp(r->ds[i].name, full))
            return kv_results_write_rows(r, group, name, type, 0, dims[rank == 1 ? 0 : 1], data, err);
    /* else written and closed at once, not kept open: a summary's many small
     * datasets (per_stream of every method) stay clear of MAXDS */
    hsize_t hd[3];
    for (int i = 0; i < rank && i < 3; i++) hd[i] = (hsize_t)dims[i];
    if (rank < 1 || rank > 3) return kv_seterr(err, KV_EINTERNAL, "%s: bad rank %d", r->path, rank);
    hid_t ds = -1;
    if (H5Lexists(r->file, full, H5P_DEFAULT) > 0) ds = H5Dopen2(r->file, full, H5P_DEFAULT);
    else {
        hid_t sp = H5Screate_simple(rank, hd, NULL);
        ds = H5Dcreate2(r->file, full, filetype(type), sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Sclose(sp);
    }
    if (ds < 0) return kv_seterr(err, KV_EINTERNAL, "%s: cannot create dataset %s", r->path, full);
    int bad = H5Dwrite(ds, memtype(type), H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0;
    bad |= H5Dclose(ds) < 0;
    if (bad) return kv_seterr(err, KV_EINTERNAL, "%s: writing %s failed (disk full?)", r->path, full);
    return KV_OK;
}

int kv_results_write_strings(kv_results *r, const char *group, const char *name, const char *const *strs,
                             int64_t n, kv_err *err)
{
    size_t w = 1;
    for (int64_t i = 0; i < n; i++) w = strlen(strs[i]) + 1 > w ? strlen(strs[i]) + 1 : w;
    char *buf = kv_calloc((size_t)(n ? n : 1), w, err);
    if (!buf) return err->code;
    for (int64_t i = 0; i < n; i++) memcpy(buf + (size_t)i * w, strs[i], strlen(strs[i]));
    hid_t ty = H5Tcopy(H5T_C_S1);
    H5Tset_size(ty, w);
    H5Tset_strpad(ty, H5T_STR_NULLPAD);
    hsize_t dims[1] = { (hsize_t)n };
    hid_t sp = H5Screate_simple(1, dims, NULL);
    char full[192];
    join(full, sizeof full, group, name);
    hid_t ds = H5Dcreate2(r->file, full, ty, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int bad = ds < 0 || (n > 0 && H5Dwrite(ds, ty, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0);
    if (ds >= 0) H5Dclose(ds);
    H5Sclose(sp);
    H5Tclose(ty);
    free(buf);
    if (bad) return kv_seterr(err, KV_EINTERNAL, "%s: cannot write %s", r->path, full);
    return KV_OK;
}

int kv_results_close(kv_results *r, kv_err *err)
{
    if (!r) return KV_OK;
    for (int i = 0; i < r->nds; i++) H5Dclose(r->ds[i].id);
    int rc = KV_OK;
    if (H5Fclose(r->file) < 0) rc = kv_seterr(err, KV_EINTERNAL, "%s: closing results failed", r->path);
    free(r);
    return rc;
}

int kv_results_read(kv_results *r, const char *group, const char *name, kv_rtype type, void **data, int64_t *count,
                    kv_err *err)
{
    char full[192];
    join(full, sizeof full, group, name);
    *data = NULL;
    *count = 0;
    if (H5Lexists(r->file, group, H5P_DEFAULT) <= 0 || H5Lexists(r->file, full, H5P_DEFAULT) <= 0)
        return kv_seterr(err, KV_EINPUT, "%s: no dataset %s", r->path, full);
    hid_t ds = H5Dopen2(r->file, full, H5P_DEFAULT);
    if (ds < 0) return kv_seterr(err, KV_EINPUT, "%s: cannot open %s", r->path, full);
    hid_t fs = H5Dget_space(ds);
    hssize_t n = H5Sget_simple_extent_npoints(fs);
    size_t sz = type == KV_R_F32 ? sizeof(float) : 8;
    void *buf = n >= 0 ? kv_malloc((size_t)(n ? n : 1) * sz, err) : NULL;
    int rc = KV_OK;
    if (n < 0) rc = kv_seterr(err, KV_EINPUT, "%s: %s has no simple shape", r->path, full);
    else if (!buf) rc = err->code;
    else if (n > 0 && H5Dread(ds, memtype(type), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
        rc = kv_seterr(err, KV_EINPUT, "%s: reading %s failed (not numeric?)", r->path, full);
    H5Sclose(fs);
    H5Dclose(ds);
    if (rc) {
        free(buf);
        return rc;
    }
    *data = buf;
    *count = (int64_t)n;
    return KV_OK;
}

/* one numeric attribute read as type t (HDF5 converts) */
static int read_attr(kv_results *r, const char *group, const char *name, hid_t t, void *val, kv_err *err)
{
    if (H5Aexists_by_name(r->file, group, name, H5P_DEFAULT) <= 0)
        return kv_seterr(err, KV_EINPUT, "%s: %s has no attribute %s", r->path, group, name);
    hid_t a = H5Aopen_by_name(r->file, group, name, H5P_DEFAULT, H5P_DEFAULT);
    int bad = a < 0 || H5Aread(a, t, val) < 0;
    if (a >= 0) H5Aclose(a);
    if (bad) return kv_seterr(err, KV_EINPUT, "%s: cannot read attribute %s of %s", r->path, name, group);
    return KV_OK;
}

int kv_results_read_attr_f64(kv_results *r, const char *group, const char *name, double *val, kv_err *err)
{
    return read_attr(r, group, name, H5T_NATIVE_DOUBLE, val, err);
}

int kv_results_read_attr_i64(kv_results *r, const char *group, const char *name, int64_t *val, kv_err *err)
{
    return read_attr(r, group, name, H5T_NATIVE_INT64, val, err);
}

