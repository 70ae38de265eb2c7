/* trace.c - kvtrace reader (validating) and writer on parallel HDF5.
 *
 * Every HDF5 call is checked; HDF5's own error stack is silenced (once, in
 * kv_trace_quiet) and replaced by one line naming the file, object and
 * problem. */
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "io/h5attr.h"
#include "io/trace.h"
#include "mpi/coll.h"

struct kv_trace {
    char path[1024];
    hid_t file, keys, values, queries, model_outputs, query_target;
    kv_trace_info info;
    int64_t *query_pos;
};

struct kv_trace_writer {
    char path[1024];
    hid_t file, keys, values, queries, query_pos, tokens, model_outputs, query_target;
    hid_t half;             /* binary16 type when spec.float16, else -1 */
    kv_trace_spec spec;
};

static void quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static hid_t make_fapl(MPI_Comm comm)
{
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0 && comm != MPI_COMM_NULL) H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    return fapl;
}

static void closeid(hid_t *id, herr_t (*fn)(hid_t))
{
    if (*id >= 0) fn(*id);
    *id = -1;
}

/* ------------------------------------------------------------------ float16 */

/* IEEE 754 binary16 as HDF5 describes it (what h5py writes for np.float16):
 * sign bit 15, exponent bits 10..14 (bias 15), mantissa bits 0..9. */
static hid_t half_type(void)
{
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0) return -1;
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* A 2-byte float with exactly the binary16 layout (either byte order).  Any
 * other 2-byte float (bfloat16 stored as a custom type, ...) is refused. */
static int is_ieee_half(hid_t ty)
{
    size_t spos, epos, esize, mpos, msize;
    if (H5Tget_size(ty) != 2 || H5Tget_fields(ty, &spos, &epos, &esize, &mpos, &msize) < 0) return 0;
    H5T_order_t order = H5Tget_order(ty);
    return spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 && H5Tget_ebias(ty) == 15 &&
           H5Tget_norm(ty) == H5T_NORM_IMPLIED && H5Tget_precision(ty) == 16 && H5Tget_offset(ty) == 0 &&
           (order == H5T_ORDER_LE || order == H5T_ORDER_BE);
}

/* float32 -> binary16 bits, round to nearest even (as numpy's astype).
 * Written by hand: HDF5 1.10's float->half conversion rounds ties away from
 * zero and, when rounding carries into the exponent, loses it (3.9996 -> 2.0,
 * 65520 -> 32768).  *bad is set for NaN, inf or |x| >= 65520 (rounds to inf). */
static uint16_t float_to_half(float f, int *bad)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x477ff000u) { /* 65520 and above, inf, NaN */
        *bad = 1;
        return (uint16_t)(sign | 0x7c00u);
    }
    if (ax < 0x38800000u) { /* below 2^-14: a half subnormal (or zero) */
        if (ax < 0x33000000u) return sign; /* below 2^-25: rounds to 0 */
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(ax >> 23); /* 14 .. 24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ax - 0x38000000u; /* exponent bias 127 -> 15 */
    uint32_t h = r >> 13, rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* a carry into the exponent is right */
    return (uint16_t)(sign | h);
}

/* ------------------------------------------------------------------ reader */

static int read_int_attr(kv_trace *t, const char *name, int required, int64_t *out, kv_err *err)
{
    if (H5Aexists(t->file, name) <= 0) {
        if (required) return kv_seterr(err, KV_EINPUT, "%s: root attribute '%s' is missing", t->path, name);
        return 1;
    }
    hid_t a = H5Aopen(t->file, name, H5P_DEFAULT), ty = a >= 0 ? H5Aget_type(a) : -1;
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    int rc = KV_OK;
    if (a < 0 || ty < 0 || sp < 0) rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' cannot be read", t->path, name);
    else if (H5Tget_class(ty) != H5T_INTEGER)
        rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' must be an integer", t->path, name);
    else if (H5Sget_simple_extent_npoints(sp) != 1)
        rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' must be a scalar", t->path, name);
    else if (H5Aread(a, H5T_NATIVE_INT64, out) < 0)
        rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' cannot be read", t->path, name);
    if (sp >= 0) H5Sclose(sp);
    if (ty >= 0) H5Tclose(ty);
    if (a >= 0) H5Aclose(a);
    return rc;
}

static int read_float_attr(kv_trace *t, const char *name, double *out, kv_err *err)
{
    if (H5Aexists(t->file, name) <= 0) return 1;
    hid_t a = H5Aopen(t->file, name, H5P_DEFAULT), ty = a >= 0 ? H5Aget_type(a) : -1;
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    int rc = KV_OK;
    H5T_class_t cl = ty >= 0 ? H5Tget_class(ty) : H5T_NO_CLASS;
    if (a < 0 || ty < 0 || sp < 0) rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' cannot be read", t->path, name);
    else if (cl != H5T_FLOAT && cl != H5T_INTEGER)
        rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' must be a number", t->path, name);
    else if (H5Sget_simple_extent_npoints(sp) != 1)
        rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' must be a scalar", t->path, name);
    else if (H5Aread(a, H5T_NATIVE_DOUBLE, out) < 0)
        rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' cannot be read", t->path, name);
    if (sp >= 0) H5Sclose(sp);
    if (ty >= 0) H5Tclose(ty);
    if (a >= 0) H5Aclose(a);
    return rc;
}

/* Read a string attribute (fixed or variable length) into buf. */
static int read_str_attr(hid_t obj, const char *file, const char *name, int required, char *buf, size_t len, kv_err *err)
{
    buf[0] = '\0';
    if (H5Aexists(obj, name) <= 0) {
        if (required) return kv_seterr(err, KV_EINPUT, "%s: root attribute '%s' is missing", file, name);
        return 1;
    }
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT), ty = a >= 0 ? H5Aget_type(a) : -1;
    hid_t sp = a >= 0 ? H5Aget_space(a) : -1;
    int rc = KV_OK;
    if (a < 0 || ty < 0 || sp < 0) {
        rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' cannot be read", file, name);
    } else if (H5Tget_class(ty) != H5T_STRING || H5Sget_simple_extent_npoints(sp) != 1) {
        rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' must be a scalar string", file, name);
    } else if (H5Tis_variable_str(ty) > 0) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, H5T_VARIABLE);
        H5Tset_cset(mt, H5Tget_cset(ty));
        char *s = NULL;
        if (H5Aread(a, mt, &s) < 0 || !s) rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' cannot be read", file, name);
        else snprintf(buf, len, "%s", s);
        if (s) H5free_memory(s);
        H5Tclose(mt);
    } else {
        size_t n = H5Tget_size(ty);
        char *s = calloc(n + 1, 1);
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_size(mt, n);
        H5Tset_strpad(mt, H5T_STR_NULLPAD);
        if (!s || H5Aread(a, mt, s) < 0) rc = kv_seterr(err, KV_EINPUT, "%s: attribute '%s' cannot be read", file, name);
        else snprintf(buf, len, "%s", s);
        free(s);
        H5Tclose(mt);
    }
    if (sp >= 0) H5Sclose(sp);
    if (ty >= 0) H5Tclose(ty);
    if (a >= 0) H5Aclose(a);
    return rc;
}

/* 1 if the dataset is stored as IEEE half (its values are float16 values) */
static int ds_is_half(hid_t ds)
{
    hid_t ty = H5Dget_type(ds);
    int h = ty >= 0 && H5Tget_class(ty) == H5T_FLOAT && is_ieee_half(ty);
    if (ty >= 0) H5Tclose(ty);
    return h;
}

/* Open dataset `name`, check its class (float or integer) and rank, return
 * dims.  optional: absent is fine (returns 1, *out = -1). */
static int open_ds(kv_trace *t, const char *name, H5T_class_t want, int rank, hsize_t *dims,
                   int optional, hid_t *out, kv_err *err)
{
    *out = -1;
    if (H5Lexists(t->file, name, H5P_DEFAULT) <= 0) {
        if (optional) return 1;
        return kv_seterr(err, KV_EINPUT, "%s: dataset %s is missing", t->path, name);
    }
    H5O_info_t oi;
    if (H5Oget_info_by_name(t->file, name, &oi, H5P_DEFAULT) < 0 || oi.type != H5O_TYPE_DATASET)
        return kv_seterr(err, KV_EINPUT, "%s: %s is not a dataset", t->path, name);
    hid_t ds = H5Dopen2(t->file, name, H5P_DEFAULT);
    if (ds < 0) return kv_seterr(err, KV_EINPUT, "%s: dataset %s cannot be opened", t->path, name);
    hid_t ty = H5Dget_type(ds), sp = H5Dget_space(ds);
    int rc = KV_OK;
    H5T_class_t cl = ty >= 0 ? H5Tget_class(ty) : H5T_NO_CLASS;
    size_t sz = ty >= 0 ? H5Tget_size(ty) : 0;
    int r = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    if (cl != want) {
        rc = kv_seterr(err, KV_EINPUT, "%s: dataset %s has the wrong type (expected %s)", t->path, name,
                       want == H5T_FLOAT ? "float32 or float64" : "an integer type");
    } else if (want == H5T_FLOAT && sz == 2 && !is_ieee_half(ty)) {
        size_t spos, epos, esize, mpos, msize;
        H5Tget_fields(ty, &spos, &epos, &esize, &mpos, &msize);
        rc = kv_seterr(err, KV_EINPUT, "%s: dataset %s is a 2-byte float that is not IEEE half precision (exponent %zu bits, "
                       "bias %zu, mantissa %zu bits; bfloat16?): upcast it to float32 (analysis/npz_to_kvtrace.py does)",
                       t->path, name, esize, H5Tget_ebias(ty), msize);
    } else if (want == H5T_FLOAT && sz != 2 && sz != 4 && sz != 8) {
        rc = kv_seterr(err, KV_EINPUT, "%s: dataset %s is a %zu-byte float (expected float16, float32 or float64)", t->path, name, sz);
    } else if (r != rank) {
        rc = kv_seterr(err, KV_EINPUT, "%s: dataset %s has rank %d, expected %d", t->path, name, r, rank);
    } else {
        H5Sget_simple_extent_dims(sp, dims, NULL);
    }
    if (ty >= 0) H5Tclose(ty);
    if (sp >= 0) H5Sclose(sp);
    if (rc) { H5Dclose(ds); return rc; }
    *out = ds;
    return KV_OK;
}

static int read_query_pos(kv_trace *t, hid_t ds, kv_err *err)
{
    int64_t m = t->info.m, n = t->info.n;
    if (m > (INT64_C(1) << 31))
        return kv_seterr(err, KV_EINPUT, "%s: /query_pos has %lld entries (more than 2^31 queries is not supported)",
                         t->path, (long long)m);
    t->query_pos = kv_malloc(sizeof(int64_t) * (size_t)(m ? m : 1), err);
    if (!t->query_pos) return err->code;
    if (H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->query_pos) < 0)
        return kv_seterr(err, KV_EINPUT, "%s: /query_pos cannot be read (corrupt or truncated data)", t->path);
    for (int64_t j = 0; j < m; j++) {
        int64_t p = t->query_pos[j];
        if (p < 1 || p > n)
            return kv_seterr(err, KV_EINPUT, "%s: /query_pos[%lld] = %lld is out of range [1, %lld]", t->path,
                             (long long)j, (long long)p, (long long)n);
        if (j && p < t->query_pos[j - 1])
            return kv_seterr(err, KV_EINPUT, "%s: /query_pos decreases at index %lld (%lld after %lld)", t->path,
                             (long long)j, (long long)p, (long long)t->query_pos[j - 1]);
    }
    return KV_OK;
}

static int validate(kv_trace *t, kv_err *err)
{
    char fmt[64];
    int64_t version;
    if (read_str_attr(t->file, t->path, "format", 1, fmt, sizeof fmt, err)) return err->code;
    if (strcmp(fmt, "kvtrace"))
        return kv_seterr(err, KV_EINPUT, "%s: root attribute 'format' is '%s', expected 'kvtrace'", t->path, fmt);
    if (read_int_attr(t, "version", 1, &version, err)) return err->code;
    if (version != 1)
        return kv_seterr(err, KV_EINPUT, "%s: kvtrace version %lld is not supported (this kvstream reads version 1)",
                         t->path, (long long)version);

    hsize_t kd[3], vd[3], qd[3], pd[1], td[1], od[3], gd[2];
    hid_t qp = -1, tok = -1;
    if (open_ds(t, "/keys", H5T_FLOAT, 3, kd, 0, &t->keys, err)) return err->code;
    if (open_ds(t, "/values", H5T_FLOAT, 3, vd, 0, &t->values, err)) return err->code;
    if (open_ds(t, "/queries", H5T_FLOAT, 3, qd, 0, &t->queries, err)) return err->code;
    if (open_ds(t, "/query_pos", H5T_INTEGER, 1, pd, 0, &qp, err)) return err->code;
    kv_trace_info *in = &t->info;
    in->kv_float16 = ds_is_half(t->keys) && ds_is_half(t->values);
    in->S = (int64_t)kd[0]; in->n = (int64_t)kd[1]; in->d = (int64_t)kd[2];
    in->dv = (int64_t)vd[2]; in->m = (int64_t)qd[1];
    int rc = KV_OK;
    if (in->S < 1 || in->n < 1 || in->d < 1 || in->dv < 1)
        rc = kv_seterr(err, KV_EINPUT, "%s: /keys [%llu, %llu, %llu] and /values [.., .., %llu] must have no zero dimension",
                       t->path, (unsigned long long)kd[0], (unsigned long long)kd[1], (unsigned long long)kd[2],
                       (unsigned long long)vd[2]);
    else if (vd[0] != kd[0] || vd[1] != kd[1])
        rc = kv_seterr(err, KV_EINPUT, "%s: /values is [%llu, %llu, ..] but /keys is [%llu, %llu, ..] (streams, tokens must agree)",
                       t->path, (unsigned long long)vd[0], (unsigned long long)vd[1], (unsigned long long)kd[0],
                       (unsigned long long)kd[1]);
    else if (qd[0] != kd[0] || qd[2] != kd[2])
        rc = kv_seterr(err, KV_EINPUT, "%s: /queries is [%llu, .., %llu] but /keys is [%llu, .., %llu] (streams, dim must agree)",
                       t->path, (unsigned long long)qd[0], (unsigned long long)qd[2], (unsigned long long)kd[0],
                       (unsigned long long)kd[2]);
    else if (in->m < 1)
        rc = kv_seterr(err, KV_EINPUT, "%s: /queries holds no query", t->path);
    else if (pd[0] != qd[1])
        rc = kv_seterr(err, KV_EINPUT, "%s: /query_pos has %llu entries but /queries has %llu queries", t->path,
                       (unsigned long long)pd[0], (unsigned long long)qd[1]);
    if (!rc) rc = read_query_pos(t, qp, err);
    if (qp >= 0) H5Dclose(qp);
    if (rc) return rc;

    /* optional datasets */
    int r = open_ds(t, "/tokens", H5T_INTEGER, 1, td, 1, &tok, err);
    if (r == KV_OK) {
        in->has_tokens = 1;
        if ((int64_t)td[0] != in->n) rc = kv_seterr(err, KV_EINPUT, "%s: /tokens has %llu entries, expected %lld", t->path, (unsigned long long)td[0], (long long)in->n);
        H5Dclose(tok);
    } else if (r != 1) return r;
    if (rc) return rc;
    r = open_ds(t, "/model_outputs", H5T_FLOAT, 3, od, 1, &t->model_outputs, err);
    if (r == KV_OK) {
        in->has_model_outputs = 1;
        if ((int64_t)od[0] != in->S || (int64_t)od[1] != in->m || (int64_t)od[2] != in->dv)
            return kv_seterr(err, KV_EINPUT, "%s: /model_outputs is [%llu, %llu, %llu], expected [%lld, %lld, %lld]", t->path,
                             (unsigned long long)od[0], (unsigned long long)od[1], (unsigned long long)od[2],
                             (long long)in->S, (long long)in->m, (long long)in->dv);
    } else if (r != 1) return r;
    r = open_ds(t, "/query_target", H5T_INTEGER, 2, gd, 1, &t->query_target, err);
    if (r == KV_OK) {
        in->has_query_target = 1;
        if ((int64_t)gd[0] != in->S || (int64_t)gd[1] != in->m)
            return kv_seterr(err, KV_EINPUT, "%s: /query_target is [%llu, %llu], expected [%lld, %lld]", t->path,
                             (unsigned long long)gd[0], (unsigned long long)gd[1], (long long)in->S, (long long)in->m);
    } else if (r != 1) return r;

    /* attributes */
    in->scale = 1.0 / sqrt((double)in->d);
    double sc;
    r = read_float_attr(t, "scale", &sc, err);
    if (r == KV_OK) {
        if (!isfinite(sc) || sc <= 0) return kv_seterr(err, KV_EINPUT, "%s: attribute 'scale' = %g must be finite and > 0", t->path, sc);
        in->scale = sc;
    } else if (r != 1) return r;
    r = read_str_attr(t->file, t->path, "source", 0, in->source, sizeof in->source, err);
    if (r != KV_OK && r != 1) return r;
    const char *opt[] = { "seed", "n_layers", "n_heads", "n_kv_heads", "head_dim" };
    int64_t *dst[] = { &in->seed, &in->n_layers, &in->n_heads, &in->n_kv_heads, &in->head_dim };
    for (int i = 0; i < 5; i++) {
        *dst[i] = -1;
        r = read_int_attr(t, opt[i], 0, dst[i], err);
        if (r != KV_OK && r != 1) return r;
    }

    /* storage: token-axis chunk of /keys */
    hid_t dcpl = H5Dget_create_plist(t->keys);
    in->chunk = 0;
    if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CHUNKED) {
        hsize_t cd[3];
        if (H5Pget_chunk(dcpl, 3, cd) == 3) in->chunk = (int64_t)cd[1];
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    return KV_OK;
}

static kv_trace *open_one(const char *path, MPI_Comm comm, kv_err *err);

kv_trace *kv_trace_open(const char *path, MPI_Comm comm, kv_err *err)
{
    quiet();
    if (comm == MPI_COMM_NULL) return open_one(path, comm, err);
    /* Rank 0 validates the metadata with the serial driver first: a corrupt
     * file can make parallel HDF5 fail at different points on different
     * ranks inside H5Fopen, leaving its internal collectives mismatched (a
     * hang).  Only a file that passed is opened collectively. */
    int rank;
    MPI_Comm_rank(comm, &rank);
    kv_err pre = { 0, "" };
    if (rank == 0) {
        kv_trace *t = open_one(path, MPI_COMM_NULL, &pre);
        kv_trace_close(t);
    }
    kv_mpi_bcast(&pre, sizeof pre, 0, comm);
    if (pre.code) {
        kv_seterr(err, pre.code, "%s", pre.msg);
        return NULL;
    }
    return open_one(path, comm, err);
}

static kv_trace *open_one(const char *path, MPI_Comm comm, kv_err *err)
{
    struct stat sb;
    if (stat(path, &sb) != 0) { kv_seterr(err, KV_EINPUT, "%s: no such file", path); return NULL; }
    if (!S_ISREG(sb.st_mode)) { kv_seterr(err, KV_EINPUT, "%s: not a regular file", path); return NULL; }
    FILE *f = fopen(path, "rb");
    if (!f) { kv_seterr(err, KV_EINPUT, "%s: cannot be read (permission denied?)", path); return NULL; }
    fclose(f);
    if (H5Fis_hdf5(path) <= 0) { kv_seterr(err, KV_EINPUT, "%s: not an HDF5 file", path); return NULL; }
    kv_trace *t = kv_calloc(1, sizeof *t, err);
    if (!t) return NULL;
    snprintf(t->path, sizeof t->path, "%s", path);
    t->keys = t->values = t->queries = t->model_outputs = t->query_target = -1;
    hid_t fapl = make_fapl(comm);
    t->file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    H5Pclose(fapl);
    if (t->file < 0) {
        kv_seterr(err, KV_EINPUT, "%s: cannot be opened as HDF5 (truncated or corrupt file)", path);
        kv_trace_close(t);
        return NULL;
    }
    if (validate(t, err)) { kv_trace_close(t); return NULL; }
    return t;
}

const kv_trace_info *kv_trace_get_info(const kv_trace *t) { return &t->info; }
const int64_t *kv_trace_query_pos(const kv_trace *t) { return t->query_pos; }
const char *kv_trace_path(const kv_trace *t) { return t->path; }

/* Read [S, a:a+cnt, width] (all streams) as float32 and check finiteness. */
static int read_rows(kv_trace *t, hid_t ds, const char *name, int64_t a, int64_t cnt, int64_t width, float *buf, kv_err *err)
{
    if (cnt <= 0) return KV_OK;
    hsize_t start[3] = { 0, (hsize_t)a, 0 }, count[3] = { (hsize_t)t->info.S, (hsize_t)cnt, (hsize_t)width };
    hid_t fs = H5Dget_space(ds);
    hid_t ms = H5Screate_simple(3, count, NULL);
    int rc = KV_OK;
    if (fs < 0 || ms < 0 || H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf) < 0)
        rc = kv_seterr(err, KV_EINPUT, "%s: %s rows [%lld, %lld) cannot be read (corrupt or truncated data)", t->path,
                       name, (long long)a, (long long)(a + cnt));
    if (fs >= 0) H5Sclose(fs);
    if (ms >= 0) H5Sclose(ms);
    if (rc) return rc;
    size_t total = (size_t)t->info.S * (size_t)cnt * (size_t)width;
    size_t bad = (size_t)-1;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(buf[i])) { bad = i; break; }
    if (bad != (size_t)-1) {
        size_t per = (size_t)cnt * (size_t)width;
        return kv_seterr(err, KV_EINPUT, "%s: %s[%zu, %lld, %zu] is not finite (%g)", t->path, name, bad / per,
                         (long long)(a + (int64_t)((bad % per) / (size_t)width)), bad % (size_t)width, (double)buf[bad]);
    }
    return KV_OK;
}

int kv_trace_read_kv(kv_trace *t, int64_t i0, int64_t cnt, float *K, float *V, kv_err *err)
{
    if (i0 < 0 || cnt < 0 || i0 + cnt > t->info.n)
        return kv_seterr(err, KV_EINTERNAL, "%s: token range [%lld, %lld) outside [0, %lld)", t->path, (long long)i0,
                         (long long)(i0 + cnt), (long long)t->info.n);
    if (read_rows(t, t->keys, "/keys", i0, cnt, t->info.d, K, err)) return err->code;
    return read_rows(t, t->values, "/values", i0, cnt, t->info.dv, V, err);
}

int kv_trace_read_queries(kv_trace *t, int64_t j0, int64_t cnt, float *Q, kv_err *err)
{
    if (j0 < 0 || cnt < 0 || j0 + cnt > t->info.m)
        return kv_seterr(err, KV_EINTERNAL, "%s: query range [%lld, %lld) outside [0, %lld)", t->path, (long long)j0,
                         (long long)(j0 + cnt), (long long)t->info.m);
    return read_rows(t, t->queries, "/queries", j0, cnt, t->info.d, Q, err);
}

int kv_trace_read_model_outputs(kv_trace *t, int64_t j0, int64_t cnt, float *Z, kv_err *err)
{
    if (t->model_outputs < 0) return kv_seterr(err, KV_EINPUT, "%s: dataset /model_outputs is missing", t->path);
    if (j0 < 0 || cnt < 0 || j0 + cnt > t->info.m) return kv_seterr(err, KV_EINTERNAL, "%s: bad query range", t->path);
    return read_rows(t, t->model_outputs, "/model_outputs", j0, cnt, t->info.dv, Z, err);
}

int kv_trace_read_query_target(kv_trace *t, int64_t j0, int64_t cnt, int64_t *tgt, kv_err *err)
{
    if (t->query_target < 0) return kv_seterr(err, KV_EINPUT, "%s: dataset /query_target is missing", t->path);
    if (j0 < 0 || cnt < 0 || j0 + cnt > t->info.m) return kv_seterr(err, KV_EINTERNAL, "%s: bad query range", t->path);
    hsize_t start[2] = { 0, (hsize_t)j0 }, count[2] = { (hsize_t)t->info.S, (hsize_t)cnt };
    hid_t fs = H5Dget_space(t->query_target), ms = H5Screate_simple(2, count, NULL);
    int rc = KV_OK;
    if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dread(t->query_target, H5T_NATIVE_INT64, ms, fs, H5P_DEFAULT, tgt) < 0)
        rc = kv_seterr(err, KV_EINPUT, "%s: /query_target cannot be read", t->path);
    H5Sclose(fs);
    H5Sclose(ms);
    for (size_t i = 0; !rc && i < (size_t)(t->info.S * cnt); i++)
        if (tgt[i] < 0 || tgt[i] >= t->info.n)
            rc = kv_seterr(err, KV_EINPUT, "%s: /query_target value %lld out of range [0, %lld)", t->path,
                           (long long)tgt[i], (long long)t->info.n);
    return rc;
}

static const char *type_name(hid_t ds, char *buf, size_t len)
{
    hid_t ty = H5Dget_type(ds);
    H5T_class_t cl = H5Tget_class(ty);
    size_t sz = H5Tget_size(ty);
    snprintf(buf, len, "%s%zu", cl == H5T_FLOAT ? "float" : cl == H5T_INTEGER ? "int" : "other", sz * 8);
    H5Tclose(ty);
    return buf;
}

static size_t describe_ds(hid_t file, const char *name, char *buf, size_t len)
{
    if (H5Lexists(file, name, H5P_DEFAULT) <= 0) return (size_t)snprintf(buf, len, "  %-15s absent\n", name);
    hid_t ds = H5Dopen2(file, name, H5P_DEFAULT);
    if (ds < 0) return (size_t)snprintf(buf, len, "  %-15s unreadable\n", name);
    hid_t sp = H5Dget_space(ds), dcpl = H5Dget_create_plist(ds);
    hsize_t dims[8] = { 0 }, cd[8] = { 0 };
    int r = H5Sget_simple_extent_ndims(sp);
    if (r > 8) r = 8;
    H5Sget_simple_extent_dims(sp, dims, NULL);
    char ty[32], shape[128] = "", chunk[128] = "contiguous", filt[128] = "";
    for (int i = 0; i < r; i++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    if (H5Pget_layout(dcpl) == H5D_CHUNKED && H5Pget_chunk(dcpl, 8, cd) > 0) {
        chunk[0] = '\0';
        for (int i = 0; i < r; i++)
            snprintf(chunk + strlen(chunk), sizeof chunk - strlen(chunk), "%s%llu", i ? ", " : "chunks [", (unsigned long long)cd[i]);
        strncat(chunk, "]", sizeof chunk - strlen(chunk) - 1);
        int nf = H5Pget_nfilters(dcpl);
        for (int i = 0; i < nf; i++) {
            unsigned flags;
            size_t nel = 0;
            char fname[64] = "";
            H5Pget_filter2(dcpl, (unsigned)i, &flags, &nel, NULL, sizeof fname, fname, NULL);
            snprintf(filt + strlen(filt), sizeof filt - strlen(filt), "%s%s", i ? "," : " filters: ", fname);
        }
    }
    size_t w = (size_t)snprintf(buf, len, "  %-15s %-8s [%s]  %s%s\n", name, type_name(ds, ty, sizeof ty), shape, chunk, filt);
    H5Pclose(dcpl);
    H5Sclose(sp);
    H5Dclose(ds);
    return w;
}

int kv_trace_describe(kv_trace *t, char *buf, size_t len)
{
    const kv_trace_info *in = &t->info;
    size_t w = (size_t)snprintf(buf, len,
        "file      %s\nstreams   %lld\ntokens    %lld\nqueries   %lld\nd         %lld\ndv        %lld\nscale     %.9g\n"
        "source    %s\nseed      %lld\n",
        t->path, (long long)in->S, (long long)in->n, (long long)in->m, (long long)in->d, (long long)in->dv, in->scale,
        in->source[0] ? in->source : "(none)", (long long)in->seed);
    if (in->n_layers >= 0 && w < len)
        w += (size_t)snprintf(buf + w, len - w, "model     layers %lld, heads %lld, kv heads %lld, head_dim %lld\n",
                              (long long)in->n_layers, (long long)in->n_heads, (long long)in->n_kv_heads, (long long)in->head_dim);
    if (w < len) w += (size_t)snprintf(buf + w, len - w, "datasets:\n");
    const char *names[] = { "/keys", "/values", "/queries", "/query_pos", "/tokens", "/model_outputs", "/query_target" };
    for (int i = 0; i < 7 && w < len; i++) w += describe_ds(t->file, names[i], buf + w, len - w);
    return KV_OK;
}

void kv_trace_close(kv_trace *t)
{
    if (!t) return;
    closeid(&t->keys, H5Dclose);
    closeid(&t->values, H5Dclose);
    closeid(&t->queries, H5Dclose);
    closeid(&t->model_outputs, H5Dclose);
    closeid(&t->query_target, H5Dclose);
    if (t->file >= 0) H5Fclose(t->file);
    free(t->query_pos);
    free(t);
}

/* ------------------------------------------------------------------ writer */

static hid_t create_ds(kv_trace_writer *w, const char *name, hid_t type, int rank, const hsize_t *dims,
                       const hsize_t *chunk, kv_err *err)
{
    hid_t sp = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunk) H5Pset_chunk(dcpl, rank, chunk);
    /* every element is written by some rank: skip the fill pass */
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
    hid_t ds = H5Dcreate2(w->file, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(sp);
    if (ds < 0) kv_seterr(err, KV_EINPUT, "%s: cannot create dataset %s", w->path, name);
    return ds;
}

kv_trace_writer *kv_trace_create(const char *path, MPI_Comm comm, const kv_trace_spec *spec, kv_err *err)
{
    quiet();
    const kv_trace_spec *s = spec;
    if (s->S < 1 || s->n < 1 || s->m < 1 || s->d < 1 || s->dv < 1) {
        kv_seterr(err, KV_EINPUT, "%s: trace shape must be positive (S=%lld n=%lld m=%lld d=%lld dv=%lld)", path,
                  (long long)s->S, (long long)s->n, (long long)s->m, (long long)s->d, (long long)s->dv);
        return NULL;
    }
    kv_trace_writer *w = kv_calloc(1, sizeof *w, err);
    if (!w) return NULL;
    snprintf(w->path, sizeof w->path, "%s", path);
    w->spec = *spec;
    w->keys = w->values = w->queries = w->query_pos = w->tokens = w->model_outputs = w->query_target = -1;
    w->half = -1;
    if (s->float16 && (w->half = half_type()) < 0) {
        kv_seterr(err, KV_EINTERNAL, "%s: cannot build the float16 file type", path);
        free(w);
        return NULL;
    }
    hid_t ft = s->float16 ? w->half : H5T_IEEE_F32LE; /* keys, values, queries */
    hid_t fapl = make_fapl(comm);
    w->file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (w->file < 0) {
        kv_seterr(err, KV_EINPUT, "%s: cannot create file (directory missing or not writable?)", path);
        if (w->half >= 0) H5Tclose(w->half);
        free(w);
        return NULL;
    }
    int64_t C = s->chunk > 0 ? s->chunk : 4096;
    hsize_t ct = (hsize_t)(C < s->n ? C : s->n), cq = (hsize_t)(C < s->m ? C : s->m);
    hsize_t kd[3] = { (hsize_t)s->S, (hsize_t)s->n, (hsize_t)s->d }, kc[3] = { 1, ct, (hsize_t)s->d };
    hsize_t vd[3] = { (hsize_t)s->S, (hsize_t)s->n, (hsize_t)s->dv }, vc[3] = { 1, ct, (hsize_t)s->dv };
    hsize_t qd[3] = { (hsize_t)s->S, (hsize_t)s->m, (hsize_t)s->d }, qc[3] = { 1, cq, (hsize_t)s->d };
    hsize_t od[3] = { (hsize_t)s->S, (hsize_t)s->m, (hsize_t)s->dv }, oc[3] = { 1, cq, (hsize_t)s->dv };
    hsize_t pd[1] = { (hsize_t)s->m }, pc[1] = { cq }, td[1] = { (hsize_t)s->n }, tc[1] = { ct };
    hsize_t gd[2] = { (hsize_t)s->S, (hsize_t)s->m }, gc[2] = { 1, cq };
    int bad = (w->keys = create_ds(w, "/keys", ft, 3, kd, kc, err)) < 0 ||
              (w->values = create_ds(w, "/values", ft, 3, vd, vc, err)) < 0 ||
              (w->queries = create_ds(w, "/queries", ft, 3, qd, qc, err)) < 0 ||
              (w->query_pos = create_ds(w, "/query_pos", H5T_STD_I64LE, 1, pd, pc, err)) < 0 ||
              (s->with_tokens && (w->tokens = create_ds(w, "/tokens", H5T_STD_I32LE, 1, td, tc, err)) < 0) ||
              (s->with_model_outputs && (w->model_outputs = create_ds(w, "/model_outputs", H5T_IEEE_F32LE, 3, od, oc, err)) < 0) ||
              (s->with_query_target && (w->query_target = create_ds(w, "/query_target", H5T_STD_I64LE, 2, gd, gc, err)) < 0);
    int64_t one = 1;
    bad = bad || kv_h5_attr_str(w->file, "format", "kvtrace") < 0 || kv_h5_attr_scalar(w->file, "version", H5T_STD_I64LE, H5T_NATIVE_INT64, &one) < 0;
    if (!bad && s->scale > 0) bad = kv_h5_attr_scalar(w->file, "scale", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &s->scale) < 0;
    if (!bad && s->source) bad = kv_h5_attr_str(w->file, "source", s->source) < 0;
    if (!bad && s->seed >= 0) bad = kv_h5_attr_scalar(w->file, "seed", H5T_STD_I64LE, H5T_NATIVE_INT64, &s->seed) < 0;
    const char *mn[] = { "n_layers", "n_heads", "n_kv_heads", "head_dim" };
    const int64_t *mv[] = { &s->n_layers, &s->n_heads, &s->n_kv_heads, &s->head_dim };
    for (int i = 0; i < 4 && !bad; i++)
        if (*mv[i] >= 0) bad = kv_h5_attr_scalar(w->file, mn[i], H5T_STD_I64LE, H5T_NATIVE_INT64, mv[i]) < 0;
    if (bad) {
        kv_seterr(err, KV_EINTERNAL, "%s: cannot create the trace layout", path);
        kv_trace_writer_close(w, NULL);
        return NULL;
    }
    return w;
}

/* write rows [a, a+cnt) of one stream s (s < 0: rank-1/2 dataset without stream axis) */
static int write_rows(kv_trace_writer *w, hid_t ds, const char *name, hid_t memtype, int rank, int64_t s, int64_t a,
                      int64_t cnt, int64_t width, const void *buf, kv_err *err)
{
    if (ds < 0) return kv_seterr(err, KV_EINTERNAL, "%s: dataset %s was not created", w->path, name);
    if (cnt <= 0) return KV_OK;
    hsize_t start[3], count[3];
    if (rank == 1) { start[0] = (hsize_t)a; count[0] = (hsize_t)cnt; }
    else if (rank == 2) { start[0] = (hsize_t)s; start[1] = (hsize_t)a; count[0] = 1; count[1] = (hsize_t)cnt; }
    else { start[0] = (hsize_t)s; start[1] = (hsize_t)a; start[2] = 0; count[0] = 1; count[1] = (hsize_t)cnt; count[2] = (hsize_t)width; }
    hid_t fs = H5Dget_space(ds), ms = H5Screate_simple(rank, count, NULL);
    int rc = KV_OK;
    if (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
        H5Dwrite(ds, memtype, ms, fs, H5P_DEFAULT, buf) < 0)
        rc = kv_seterr(err, KV_EINTERNAL, "%s: writing %s rows [%lld, %lld) failed (disk full? range outside the dataset?)",
                       w->path, name, (long long)a, (long long)(a + cnt));
    H5Sclose(fs);
    H5Sclose(ms);
    return rc;
}

/* float rows of keys/values/queries: as float32, or converted here to
 * binary16 (refusing what float16 cannot hold) and written without HDF5
 * conversion */
static int write_float_rows(kv_trace_writer *w, hid_t ds, const char *name, int64_t s, int64_t a, int64_t cnt,
                            int64_t width, const float *buf, kv_err *err)
{
    if (w->half < 0 || cnt <= 0) return write_rows(w, ds, name, H5T_NATIVE_FLOAT, 3, s, a, cnt, width, buf, err);
    size_t total = (size_t)cnt * (size_t)width;
    uint16_t *h = kv_malloc(total * sizeof *h, err);
    if (!h) return err->code;
    for (size_t i = 0; i < total; i++) {
        int bad = 0;
        h[i] = float_to_half(buf[i], &bad);
        if (bad) {
            free(h);
            return kv_seterr(err, KV_EINPUT, "%s: %s[%lld, %lld, %zu] = %g does not fit in float16 (|x| <= 65504, finite); "
                             "write float32 instead (--dtype float32)", w->path, name, (long long)s,
                             (long long)(a + (int64_t)(i / (size_t)width)), i % (size_t)width, (double)buf[i]);
        }
    }
    int rc = write_rows(w, ds, name, w->half, 3, s, a, cnt, width, h, err);
    free(h);
    return rc;
}

int kv_trace_write_kv(kv_trace_writer *w, int64_t s, int64_t i0, int64_t cnt, const float *K, const float *V, kv_err *err)
{
    if (write_float_rows(w, w->keys, "/keys", s, i0, cnt, w->spec.d, K, err)) return err->code;
    return write_float_rows(w, w->values, "/values", s, i0, cnt, w->spec.dv, V, err);
}

int kv_trace_write_queries(kv_trace_writer *w, int64_t s, int64_t j0, int64_t cnt, const float *Q, kv_err *err)
{
    return write_float_rows(w, w->queries, "/queries", s, j0, cnt, w->spec.d, Q, err);
}

int kv_trace_write_query_pos(kv_trace_writer *w, int64_t j0, int64_t cnt, const int64_t *pos, kv_err *err)
{
    return write_rows(w, w->query_pos, "/query_pos", H5T_NATIVE_INT64, 1, -1, j0, cnt, 1, pos, err);
}

int kv_trace_write_tokens(kv_trace_writer *w, int64_t i0, int64_t cnt, const int32_t *tok, kv_err *err)
{
    return write_rows(w, w->tokens, "/tokens", H5T_NATIVE_INT32, 1, -1, i0, cnt, 1, tok, err);
}

int kv_trace_write_model_outputs(kv_trace_writer *w, int64_t s, int64_t j0, int64_t cnt, const float *Z, kv_err *err)
{
    return write_rows(w, w->model_outputs, "/model_outputs", H5T_NATIVE_FLOAT, 3, s, j0, cnt, w->spec.dv, Z, err);
}

int kv_trace_write_query_target(kv_trace_writer *w, int64_t s, int64_t j0, int64_t cnt, const int64_t *tgt, kv_err *err)
{
    return write_rows(w, w->query_target, "/query_target", H5T_NATIVE_INT64, 2, s, j0, cnt, 1, tgt, err);
}

int kv_trace_writer_close(kv_trace_writer *w, kv_err *err)
{
    if (!w) return KV_OK;
    hid_t *ids[] = { &w->keys, &w->values, &w->queries, &w->query_pos, &w->tokens, &w->model_outputs, &w->query_target };
    for (int i = 0; i < 7; i++) closeid(ids[i], H5Dclose);
    closeid(&w->half, H5Tclose);
    int rc = KV_OK;
    if (w->file >= 0 && H5Fclose(w->file) < 0) rc = kv_seterr(err, KV_EINTERNAL, "%s: closing the file failed", w->path);
    free(w);
    return rc;
}
