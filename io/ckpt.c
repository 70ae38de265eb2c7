/* ckpt.c - checkpoint files on parallel HDF5, written and read in pieces
 * at offsets (see ckpt.h). */
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

/* Bytes [start, start + n) of the 1-d byte dataset ds, written from or read
 * into p (independent I/O); nonzero on failure. */
static int slab_io(hid_t ds, hsize_t start, size_t n, void *p, int write)
{
    hsize_t cnt = (hsize_t)n;
    hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(1, &cnt, NULL);
    int bad = fs < 0 || ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &cnt, NULL) < 0 ||
              (write ? H5Dwrite(ds, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, p)
                     : H5Dread(ds, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, p)) < 0;
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    return bad;
}

struct kv_ckpt_writer {
    MPI_Comm comm;
    int rank;
    char path[1100], tmp[1100];
    hid_t f, ds, ods;
    int64_t *all; /* [P + 1]: where each rank's state starts */
    size_t len;   /* this rank's state */
    int bad;      /* a piece could not be written */
};

static void writer_close(kv_ckpt_writer *w)
{
    if (w->ds >= 0) H5Dclose(w->ds);
    if (w->ods >= 0) H5Dclose(w->ods);
    w->ds = w->ods = -1;
}

int kv_ckpt_create(const char *path, MPI_Comm comm, size_t len, kv_ckpt_writer **wp, kv_err *err)
{
    int rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    *wp = NULL;
    kv_ckpt_writer *w = calloc(1, sizeof *w);
    int64_t *all = malloc(sizeof(int64_t) * (size_t)(P + 1));
    if (kv_mpi_any(!w || !all, comm)) {
        free(w);
        free(all);
        return kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
    }
    w->comm = comm;
    w->rank = rank;
    w->all = all;
    w->len = len;
    w->ds = w->ods = -1;
    snprintf(w->path, sizeof w->path, "%s", path);
    snprintf(w->tmp, sizeof w->tmp, "%s.tmp", path);
    /* where each rank's bytes go */
    kv_mpi_allgather_i64((int64_t)len, all + 1, comm);
    all[0] = 0;
    for (int r = 0; r < P; r++) all[r + 1] += all[r];
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    w->f = H5Fcreate(w->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    int rc = KV_OK;
    if (kv_mpi_any(w->f < 0, comm)) {
        rc = kv_seterr(err, KV_EINPUT, "%s: cannot create checkpoint (directory missing or not writable?)", w->tmp);
    } else {
        hsize_t total = (hsize_t)all[P], np1 = (hsize_t)(P + 1);
        hid_t sp = H5Screate_simple(1, &total, NULL), osp = H5Screate_simple(1, &np1, NULL);
        w->ds = H5Dcreate2(w->f, "/state", H5T_NATIVE_UINT8, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        w->ods = H5Dcreate2(w->f, "/offsets", H5T_STD_I64LE, osp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        H5Sclose(sp);
        H5Sclose(osp);
        if (kv_mpi_any(w->ds < 0 || w->ods < 0, comm))
            rc = kv_seterr(err, KV_EINTERNAL, "%s: cannot create the checkpoint's datasets", w->tmp);
    }
    if (rc) {
        writer_close(w);
        if (w->f >= 0) H5Fclose(w->f);
        free(all);
        free(w);
        return rc;
    }
    *wp = w;
    return KV_OK;
}

int kv_ckpt_put(kv_ckpt_writer *w, const void *p, size_t n, size_t at, kv_err *err)
{
    if (w->bad) return kv_seterr(err, KV_EINTERNAL, "%s: writing the checkpoint failed", w->tmp);
    if (n == 0) return KV_OK;
    if (at > w->len || n > w->len - at) {
        w->bad = 1;
        return kv_seterr(err, KV_EINTERNAL, "checkpoint: a state piece [%zu, %zu) is beyond the counted %zu bytes",
                         at, at + n, w->len);
    }
    /* independent: ranks write different amounts, at their own pace */
    w->bad = slab_io(w->ds, (hsize_t)(w->all[w->rank] + (int64_t)at), n, (void *)p, 1);
    if (w->bad) return kv_seterr(err, KV_EINTERNAL, "%s: writing the checkpoint failed (disk full?)", w->tmp);
    return KV_OK;
}

int kv_ckpt_finish(kv_ckpt_writer *w, const kv_ckpt_meta *meta, int failed, kv_err *err)
{
    MPI_Comm comm = w->comm;
    int bad = kv_mpi_any(failed || w->bad, comm);
    if (!bad) {
        if (w->rank == 0) bad |= H5Dwrite(w->ods, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, w->all) < 0;
        /* attributes are collective: every rank writes the same values */
        kv_ckpt_meta m = *meta;
        bad |= kv_h5_attr_str(w->f, "format", "kvstream-checkpoint");
        bad |= kv_h5_attr_str(w->f, "trace", m.trace) | kv_h5_attr_str(w->f, "methods", m.methods) |
               kv_h5_attr_str(w->f, "semantics", m.semantics) | kv_h5_attr_str(w->f, "out", m.out);
        for (int i = 0; i < NI; i++)
            bad |= kv_h5_attr_scalar(w->f, int_names[i], H5T_NATIVE_INT64, H5T_NATIVE_INT64, int_field(&m, i));
    }
    writer_close(w);
    bad |= H5Fclose(w->f) < 0;
    int rc = KV_OK;
    if (kv_mpi_any(bad, comm)) {
        rc = err->code ? err->code : kv_seterr(err, KV_EINTERNAL, "%s: writing the checkpoint failed (disk full?)", w->tmp);
    } else {
        int moved = 1;
        if (w->rank == 0) moved = rename(w->tmp, w->path) == 0;
        kv_mpi_bcast(&moved, sizeof moved, 0, comm);
        if (!moved) rc = kv_seterr(err, KV_EINTERNAL, "%s: cannot rename the checkpoint into place", w->path);
    }
    free(w->all);
    free(w);
    return rc;
}

struct kv_ckpt_reader {
    hid_t f, ds;
    hsize_t start, len; /* this rank's state in /state */
    char path[1100];
};

int kv_ckpt_open(const char *path, MPI_Comm comm, const kv_ckpt_meta *want, kv_ckpt_meta *got, kv_ckpt_reader **rdp,
                 size_t *len, kv_err *err)
{
    int rank, P;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &P);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    *rdp = NULL;
    *len = 0;
    hid_t ds = -1;
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
        hid_t ods = H5Dopen2(f, "/offsets", H5P_DEFAULT);
        ds = H5Dopen2(f, "/state", H5P_DEFAULT);
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
            kv_ckpt_reader *r = calloc(1, sizeof *r);
            if (!r) {
                rc = kv_seterr(err, KV_EINTERNAL, "checkpoint: out of memory");
            } else {
                r->f = f;
                r->ds = ds;
                r->start = (hsize_t)off[rank];
                r->len = (hsize_t)(off[rank + 1] - off[rank]);
                snprintf(r->path, sizeof r->path, "%s", path);
                *rdp = r;
                *len = (size_t)r->len;
            }
        }
        if (ods >= 0) H5Dclose(ods);
        free(off);
    }
done:
    if (rc) {
        if (ds >= 0) H5Dclose(ds);
        H5Fclose(f);
    }
    return rc;
}

int kv_ckpt_get(kv_ckpt_reader *r, void *dst, size_t n, size_t at, kv_err *err)
{
    if (n == 0) return KV_OK;
    if (at > r->len || n > r->len - at)
        return kv_seterr(err, KV_EINPUT, "%s: checkpoint state is truncated", r->path);
    return slab_io(r->ds, r->start + (hsize_t)at, n, dst, 0) ? kv_seterr(err, KV_EINPUT, "%s: checkpoint state cannot be read (corrupt)", r->path) : KV_OK;
}

void kv_ckpt_close(kv_ckpt_reader *r)
{
    if (!r) return;
    H5Dclose(r->ds);
    H5Fclose(r->f);
    free(r);
}
