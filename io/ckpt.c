/* ckpt.c - checkpoint files on parallel HDF5 (see ckpt.h). */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "io/ckpt.h"
#include "mpi/coll.h"
#include "io/h5attr.h"

#define NI 14
static const char *int_names[NI] = { "ranks", "streams", "tokens", "queries", "d", "dv", "seed", "window",
                                     "batch", "shard_chunk", "bound_ratio", "fingerprint", "next_query",
                                     "reference" };

static int64_t *int_field(kv_ckpt_meta *m, int i)
{
    int64_t *f[NI] = { &m->ranks, &m->S, &m->n, &m->m, &m->d, &m->dv, &m->seed, &m->window,
                       &m->batch, &m->shard_chunk, &m->bound_ratio, &m->fingerprint, &m->next_query,
                       &m->reference };
    return f[i];
}

static int get_attr(hid_t f, const char *name, hid_t type, void *v)
{
    if (H5Aexists(f, name) <= 0) return 1;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    int bad = a < 0 || H5Aread(a, type, v) < 0;
    if (a >= 0) H5Aclose(a);
    return bad;
}

static int get_str(hid_t f, const char *name, char *buf, size_t len)
{
    if (H5Aexists(f, name) <= 0) return 1;
    hid_t a = H5Aopen(f, name, H5P_DEFAULT), ty = a >= 0 ? H5Aget_type(a) : -1;
    int bad = a < 0 || ty < 0 || H5Tget_class(ty) != H5T_STRING || H5Tis_variable_str(ty) > 0;
    if (!bad) {
        size_t n = H5Tget_size(ty);
        char *s = calloc(n + 1, 1);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, n);
        bad = !s || H5Aread(a, mt, s) < 0;
        if (!bad) snprintf(buf, len, "%s", s);
        free(s);
        H5Tclose(mt);
    }
    if (ty >= 0) H5Tclose(ty);
    if (a >= 0) H5Aclose(a);
    return bad;
}

int kv_ckpt_write(const char *path, MPI_Comm comm, const kv_ckpt_meta *meta, const void *blob, size_t len, kv_err *err)
{
    int rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    /* where each rank's bytes go */
    int64_t mine = (int64_t)len, off = 0, *all = malloc(sizeof(int64_t) * (size_t)(P + 1));
    if (!all) return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    kv_mpi_allgather_i64(mine, all + 1, comm);
    all[0] = 0;
    for (int r = 0; r < P; r++) all[r + 1] += all[r];
    off = all[rank];
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (f < 0) { free(all); return kv_seterr(err, KV_EINPUT, "%s: cannot create checkpoint (directory missing or not writable?)", tmp); }
    int bad = 0;
    hsize_t total = (hsize_t)all[P], np1 = (hsize_t)(P + 1);
    hid_t sp = H5Screate_simple(1, &total, NULL), osp = H5Screate_simple(1, &np1, NULL);
    hid_t ds = H5Dcreate2(f, "/state", H5T_NATIVE_UINT8, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t ods = H5Dcreate2(f, "/offsets", H5T_STD_I64LE, osp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    bad = ds < 0 || ods < 0;
    if (!bad && len > 0) { /* independent: ranks write different amounts */
        hsize_t start = (hsize_t)off, cnt = (hsize_t)len;
        hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(1, &cnt, NULL);
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &cnt, NULL);
        bad = H5Dwrite(ds, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, blob) < 0;
        H5Sclose(fs);
        H5Sclose(ms);
    }
    if (ods >= 0 && rank == 0) bad |= H5Dwrite(ods, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, all) < 0;
    /* attributes are collective: every rank writes the same values */
    kv_ckpt_meta m = *meta;
    bad |= kv_h5_attr_str(f, "format", "kvstream-checkpoint");
    bad |= kv_h5_attr_str(f, "trace", m.trace) | kv_h5_attr_str(f, "methods", m.methods) | kv_h5_attr_str(f, "semantics", m.semantics) |
           kv_h5_attr_str(f, "out", m.out);
    for (int i = 0; i < NI; i++) bad |= kv_h5_attr_scalar(f, int_names[i], H5T_NATIVE_INT64, H5T_NATIVE_INT64, int_field(&m, i));
    if (ds >= 0) H5Dclose(ds);
    if (ods >= 0) H5Dclose(ods);
    H5Sclose(sp);
    H5Sclose(osp);
    bad |= H5Fclose(f) < 0;
    free(all);
    if (kv_mpi_any(bad, comm)) return kv_seterr(err, KV_EINTERNAL, "%s: writing the checkpoint failed (disk full?)", tmp);
    int rc = 0;
    if (rank == 0) rc = rename(tmp, path) != 0;
    kv_mpi_bcast(&rc, sizeof rc, 0, comm);
    if (rc) return kv_seterr(err, KV_EINTERNAL, "%s: cannot rename the checkpoint into place", path);
    return KV_OK;
}

int kv_ckpt_read(const char *path, MPI_Comm comm, const kv_ckpt_meta *want, kv_ckpt_meta *got, void **blob,
                 size_t *len, kv_err *err)
{
    int rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    *blob = NULL;
    *len = 0;
    struct stat sb;
    if (stat(path, &sb) != 0) return kv_seterr(err, KV_EINPUT, "%s: no such checkpoint file", path);
    if (H5Fis_hdf5(path) <= 0) return kv_seterr(err, KV_EINPUT, "%s: not a checkpoint (not HDF5)", path);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (f < 0) return kv_seterr(err, KV_EINPUT, "%s: checkpoint cannot be opened (truncated or corrupt)", path);
    char fmt[64] = "";
    memset(got, 0, sizeof *got);
    int rc = KV_OK;
    if (get_str(f, "format", fmt, sizeof fmt) || strcmp(fmt, "kvstream-checkpoint")) {
        rc = kv_seterr(err, KV_EINPUT, "%s: not a kvstream checkpoint", path);
        goto done;
    }
    if (get_str(f, "trace", got->trace, sizeof got->trace) || get_str(f, "methods", got->methods, sizeof got->methods) ||
        get_str(f, "semantics", got->semantics, sizeof got->semantics) || get_str(f, "out", got->out, sizeof got->out)) {
        rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint attributes are missing", path);
        goto done;
    }
    for (int i = 0; i < NI; i++)
        if (get_attr(f, int_names[i], H5T_NATIVE_INT64, int_field(got, i))) {
            rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint attribute '%s' is missing", path, int_names[i]);
            goto done;
        }
    /* the run must be the same one */
    if (got->ranks != want->ranks) {
        rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint was written by %lld ranks, this run has %lld (resume with the same rank count)",
                       path, (long long)got->ranks, (long long)want->ranks);
        goto done;
    }
    if (got->fingerprint != want->fingerprint || got->S != want->S || got->n != want->n || got->m != want->m ||
        got->d != want->d || got->dv != want->dv) {
        rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint was written for a different trace (%s)", path, got->trace);
        goto done;
    }
    if (strcmp(got->methods, want->methods)) {
        rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint was written for --methods '%s', not '%s'", path, got->methods,
                       want->methods);
        goto done;
    }
    if (strcmp(got->semantics, want->semantics) || got->seed != want->seed || got->window != want->window ||
        got->batch != want->batch || got->shard_chunk != want->shard_chunk || got->bound_ratio != want->bound_ratio) {
        rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint was written with other replay options (seed, batch, semantics, "
                       "window, shard chunk or bound ratio differ)", path);
        goto done;
    }
    if (got->reference != want->reference) {
        rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint was written with another --reference (the reference's state "
                       "differs between memory, stream and none)", path);
        goto done;
    }
    if (strcmp(got->out, want->out)) {
        rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint was written with -o '%s'; resume with the same results file", path,
                       got->out);
        goto done;
    }
    if (got->next_query < 0 || got->next_query > got->m) {
        rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint position %lld is out of range", path, (long long)got->next_query);
        goto done;
    }
    {
        int64_t *off = malloc(sizeof(int64_t) * (size_t)(P + 1));
        hid_t ods = H5Dopen2(f, "/offsets", H5P_DEFAULT), ds = H5Dopen2(f, "/state", H5P_DEFAULT);
        hsize_t total = 0;
        if (ds >= 0) {
            hid_t sp = H5Dget_space(ds);
            H5Sget_simple_extent_dims(sp, &total, NULL);
            H5Sclose(sp);
        }
        if (!off || ods < 0 || ds < 0 || H5Dread(ods, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, off) < 0 ||
            off[0] != 0 || off[P] != (int64_t)total || off[rank] > off[rank + 1]) {
            rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint /state or /offsets is missing or inconsistent", path);
        } else {
            hsize_t start = (hsize_t)off[rank], cnt = (hsize_t)(off[rank + 1] - off[rank]);
            *blob = malloc(cnt ? cnt : 1);
            hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(1, &cnt, NULL);
            if (!*blob) rc = kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
            else if (cnt > 0 && (H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &cnt, NULL) < 0 ||
                                 H5Dread(ds, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, *blob) < 0))
                rc = kv_seterr(err, KV_EINPUT, "%s: checkpoint state cannot be read (corrupt)", path);
            *len = (size_t)cnt;
            H5Sclose(fs);
            H5Sclose(ms);
        }
        if (ods >= 0) H5Dclose(ods);
        if (ds >= 0) H5Dclose(ds);
        free(off);
    }
done:
    H5Fclose(f);
    if (rc) { free(*blob); *blob = NULL; *len = 0; }
    return rc;
}
