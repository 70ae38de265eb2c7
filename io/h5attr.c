/* h5attr.c - scalar attribute writers (see h5attr.h). */
#include <string.h>
#include "io/h5attr.h"

int kv_h5_attr_scalar(hid_t obj, const char *name, hid_t file_type, hid_t mem_type, const void *val)
{
    if (H5Aexists(obj, name) > 0) H5Adelete(obj, name); /* a resumed run rewrites its attributes */
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, file_type, sp, H5P_DEFAULT, H5P_DEFAULT);
    int bad = a < 0 || H5Awrite(a, mem_type, val) < 0;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return bad ? -1 : 0;
}

int kv_h5_attr_str(hid_t obj, const char *name, const char *val)
{
    hid_t ty = H5Tcopy(H5T_C_S1);
    H5Tset_size(ty, strlen(val) + 1);
    H5Tset_strpad(ty, H5T_STR_NULLTERM);
    int rc = kv_h5_attr_scalar(obj, name, ty, ty, val);
    H5Tclose(ty);
    return rc;
}

int kv_h5_annotate(const char *path, const kv_h5_note *notes, int n, kv_err *err)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return kv_seterr(err, KV_EINTERNAL, "%s: cannot reopen it to write its attributes", path);
    int bad = 0;
    for (int k = 0; k < n && !bad; k++) {
        const kv_h5_note *a = &notes[k];
        if (a->s) bad = kv_h5_attr_str(f, a->name, a->s);
        else if (a->is_int) bad = kv_h5_attr_scalar(f, a->name, H5T_STD_I64LE, H5T_NATIVE_INT64, &a->i);
        else bad = kv_h5_attr_scalar(f, a->name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &a->f);
    }
    if (H5Fclose(f) < 0) bad = 1;
    return bad ? kv_seterr(err, KV_EINTERNAL, "%s: cannot write its attributes", path) : KV_OK;
}
