/* kverr.c - error values and checked allocation. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include "core/kverr.h"

int kv_seterr(kv_err *err, int code, const char *fmt, ...)
{
    if (err && err->code == KV_OK) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

void kv_err_clear(kv_err *err)
{
    err->code = KV_OK;
    err->msg[0] = '\0';
}

void *kv_malloc(size_t bytes, kv_err *err)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) kv_seterr(err, KV_EINTERNAL, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *kv_calloc(size_t count, size_t size, kv_err *err)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) kv_seterr(err, KV_EINTERNAL, "out of memory allocating %zu x %zu bytes", count, size);
    return p;
}
