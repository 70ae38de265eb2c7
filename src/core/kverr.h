/* kverr.h - error values returned by every kvstream library function.
 *
 * Libraries never print: they fill a kv_err and return its code.  Only the
 * command-line front end (src/main.c) and the MPI agreement helper decide who
 * prints the one-line message. */
#ifndef KVSTREAM_KVERR_H
#define KVSTREAM_KVERR_H

enum {
    KV_OK = 0,
    KV_EINTERNAL = 1, /* bug, allocation failure, I/O failure */
    KV_EINPUT = 2,    /* bad input: file, option, spec; exit status 2 */
    KV_ESTOPPED = 3,  /* stopped by SIGTERM/SIGUSR1 (checkpoint written if asked); exit status 3 */
};

typedef struct {
    int code;        /* KV_OK, KV_EINPUT, KV_EINTERNAL */
    char msg[512];   /* one line, no trailing newline */
} kv_err;

/* Set err (if not NULL and not already set) and return code.  The first error
 * wins so that the root cause survives later clean-up failures. */
int kv_seterr(kv_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

void kv_err_clear(kv_err *err);

/* malloc/calloc that never return NULL silently: on failure they set err. */
void *kv_malloc(size_t bytes, kv_err *err);
void *kv_calloc(size_t count, size_t size, kv_err *err);

#endif
