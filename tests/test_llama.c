/* test_llama.c - llama2.c loader, forward pass and `kvstream record`.
 *
 * usage: test_llama MODEL TMPDIR
 *   MODEL   stories260K.bin (tests/data)
 *   TMPDIR  a writable directory for corrupted checkpoint copies and traces */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cmd/cmd_record.h"
#include "model/llama.h"
#include "testutil.h"

static const char *model_path, *tmp_dir;

/* Greedy decoding from BOS, as listed under "Check value" in
 * tests/data/README.md (two independent implementations agree).  The
 * first entry is BOS itself; the rest are successive argmax tokens. */
static const int check_ids[] = { 1, 461, 461, 401, 401, 401, 461, 378, 455, 473, 456, 435,
                                 299, 362, 409, 283, 264, 283, 452, 288, 13, 431, 431 };
enum { NCHECK = sizeof check_ids / sizeof check_ids[0] };

static char *tmp_path(const char *name)
{
    static char buf[4][1024];
    static int k;
    char *p = buf[k++ % 4];
    snprintf(p, sizeof buf[0], "%s/test_llama_%s", tmp_dir, name);
    return p;
}

static unsigned char *read_all(const char *path, long *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)*len);
    if (b && fread(b, 1, (size_t)*len, f) != (size_t)*len) { free(b); b = NULL; }
    fclose(f);
    return b;
}

static void write_all(const char *path, const void *b, long len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, (size_t)len, f) != (size_t)len) { fprintf(stderr, "cannot write %s\n", path); exit(1); }
    fclose(f);
}

static void test_check_value(void)
{
    kv_err err = { 0, "" };
    kv_llama *m = kv_llama_load(model_path, &err);
    CHECK(m != NULL, "load: %s", err.msg);
    if (!m) return;
    const kv_llama_config *c = kv_llama_get_config(m);
    CHECK(c->dim == 64 && c->hidden_dim == 172 && c->n_layers == 5 && c->n_heads == 8 && c->n_kv_heads == 4 &&
          c->vocab_size == 512 && c->seq_len == 512 && c->head_dim == 8 && c->shared_classifier,
          "config %d %d %d %d %d %d %d", c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads,
          c->vocab_size, c->seq_len);
    kv_llama_state *st = kv_llama_state_new(m, &err);
    int tok = 1, got[NCHECK];
    const float *logits = NULL;
    for (int p = 0; p < NCHECK; p++) {
        got[p] = tok;
        if (kv_llama_step(m, st, tok, p, &logits, &err)) break;
        tok = kv_llama_argmax(logits, c->vocab_size);
    }
    CHECK(err.code == KV_OK, "step: %s", err.msg);
    for (int p = 0; p < NCHECK; p++) CHECK(got[p] == check_ids[p], "greedy position %d: got %d, README says %d", p, got[p], check_ids[p]);
    kv_llama_state_free(st);
    kv_llama_free(m);
}

/* The per-layer view must be what attention used: recompute the attention of
 * every query head from the keys/values seen so far (GQA: head h reads kv
 * head h / group) and compare with the model's own output.  Also run past
 * seq_len and check that rewinding reproduces a position bit for bit. */
static void test_layer_io(void)
{
    kv_err err = { 0, "" };
    kv_llama *m = kv_llama_load(model_path, &err);
    if (!m) { CHECK(0, "load: %s", err.msg); return; }
    const kv_llama_config *c = kv_llama_get_config(m);
    int hd = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads, L = c->n_layers, g = Hq / Hkv;
    int N = 600; /* > seq_len 512: the cache grows and RoPE is computed */
    size_t kvd = (size_t)Hkv * hd;
    float *K = malloc((size_t)L * N * kvd * sizeof(float)), *V = malloc((size_t)L * N * kvd * sizeof(float));
    float *lg5 = malloc((size_t)c->vocab_size * sizeof(float));
    int *toks = malloc((size_t)N * sizeof(int));
    kv_llama_state *st = kv_llama_state_new(m, &err);
    int tok = 1, finite = 1;
    double worst = 0;
    const float *logits = NULL;
    for (int p = 0; p < N && !err.code; p++) {
        toks[p] = tok;
        if (kv_llama_step(m, st, tok, p, &logits, &err)) break;
        if (p == 5) memcpy(lg5, logits, (size_t)c->vocab_size * sizeof(float));
        for (int i = 0; i < c->vocab_size; i++) finite &= isfinite(logits[i]) != 0;
        for (int l = 0; l < L; l++) {
            kv_llama_layer_io io;
            kv_llama_layer(st, l, &io);
            memcpy(K + ((size_t)l * N + p) * kvd, io.k, kvd * sizeof(float));
            memcpy(V + ((size_t)l * N + p) * kvd, io.v, kvd * sizeof(float));
            if (p % 97 != 0 && p != N - 1) continue; /* spot checks keep the test fast */
            for (int h = 0; h < Hq; h++) {
                const float *q = io.q + h * hd;
                int kh = h / g;
                double mx = -INFINITY, sum = 0, acc[64] = { 0 };
                double *s = malloc((size_t)(p + 1) * sizeof(double));
                for (int t = 0; t <= p; t++) {
                    const float *k = K + ((size_t)l * N + t) * kvd + kh * hd;
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += (double)q[i] * k[i];
                    s[t] = d / sqrt((double)hd);
                    mx = s[t] > mx ? s[t] : mx;
                }
                for (int t = 0; t <= p; t++) {
                    double w = exp(s[t] - mx);
                    sum += w;
                    for (int i = 0; i < hd; i++) acc[i] += w * V[((size_t)l * N + t) * kvd + kh * hd + i];
                }
                for (int i = 0; i < hd; i++) {
                    double e = fabs(acc[i] / sum - io.out[h * hd + i]);
                    worst = e > worst ? e : worst;
                }
                free(s);
            }
        }
        tok = kv_llama_argmax(logits, c->vocab_size);
    }
    CHECK(err.code == KV_OK, "step: %s", err.msg);
    CHECK(finite, "non-finite logits within %d positions", N);
    CHECK(worst < 1e-5, "model attention output differs from a recomputation by %g", worst);

    /* rewind to position 5 and rerun it: same logits, bit for bit */
    CHECK(kv_llama_step(m, st, toks[5], 5, &logits, &err) == KV_OK, "rewind: %s", err.msg);
    CHECK(logits && !memcmp(logits, lg5, (size_t)c->vocab_size * sizeof(float)), "rewound position 5 gives other logits");
    /* skipping ahead is refused */
    kv_err e2 = { 0, "" };
    CHECK(kv_llama_step(m, st, 1, 100, &logits, &e2) == KV_EINPUT && strstr(e2.msg, "position"), "skip ahead: '%s'", e2.msg);
    kv_err e3 = { 0, "" };
    CHECK(kv_llama_step(m, st, c->vocab_size, 6, &logits, &e3) == KV_EINPUT && strstr(e3.msg, "vocabulary"), "bad token: '%s'", e3.msg);
    free(K); free(V); free(lg5); free(toks);
    kv_llama_state_free(st);
    kv_llama_free(m);
}

/* Load `path` and expect KV_EINPUT with a message naming the file and containing `want`. */
static void expect_reject(const char *what, const char *path, const char *want)
{
    kv_err err = { 0, "" };
    kv_llama *m = kv_llama_load(path, &err);
    CHECK(m == NULL && err.code == KV_EINPUT, "%s: loaded (code %d)", what, err.code);
    CHECK(strstr(err.msg, path) != NULL, "%s: message '%s' does not name the file", what, err.msg);
    CHECK(strstr(err.msg, want) != NULL, "%s: message '%s' does not mention '%s'", what, err.msg, want);
    kv_llama_free(m);
}

static void test_bad_checkpoints(void)
{
    long len = 0;
    unsigned char *b = read_all(model_path, &len);
    CHECK(b && len == 1056540, "cannot read %s", model_path);
    if (!b) return;
    int32_t h[7];
    memcpy(h, b, sizeof h);

    char *p = tmp_path("truncated.bin");
    write_all(p, b, len - 100);
    expect_reject("truncated", p, "truncated");
    p = tmp_path("header_only.bin");
    write_all(p, b, 28);
    expect_reject("header only", p, "implies 1056540 bytes");
    p = tmp_path("short.bin");
    write_all(p, b, 10);
    expect_reject("shorter than the header", p, "too short");
    p = tmp_path("trailing.bin");
    unsigned char *big = calloc((size_t)len + 4, 1);
    memcpy(big, b, (size_t)len);
    write_all(p, big, len + 4);
    expect_reject("trailing bytes", p, "trailing");
    free(big);

    /* header fields: patch one int32 at a time */
    struct { const char *what; int field; int32_t val; const char *want; } cases[] = {
        { "negative n_layers", 2, -5, "n_layers = -5" },
        { "n_heads 3 does not divide dim 64", 3, 3, "not divisible by n_heads 3" },
        { "n_kv_heads 3 does not divide n_heads 8", 4, 3, "not divisible by n_kv_heads 3" },
        { "n_kv_heads > n_heads", 4, 16, "n_kv_heads = 16" },
        { "zero dim", 0, 0, "dim = 0" },
        { "absurd hidden_dim", 1, 1 << 30, "hidden_dim" },
        { "zero vocab", 5, 0, "vocab_size = 0" },
        { "unshared classifier without its weights", 5, -512, "unshared" },
        { "negative seq_len", 6, -1, "seq_len" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int32_t hh[7];
        memcpy(hh, h, sizeof hh);
        hh[cases[i].field] = cases[i].val;
        memcpy(b, hh, sizeof hh);
        p = tmp_path("bad_header.bin");
        write_all(p, b, len);
        expect_reject(cases[i].what, p, cases[i].want);
    }
    memcpy(b, h, sizeof h);

    /* a NaN weight */
    p = tmp_path("nan.bin");
    uint32_t nan_bits = 0x7fc00000u;
    memcpy(b + 28 + 4 * 1000, &nan_bits, 4);
    write_all(p, b, len);
    expect_reject("NaN weight", p, "not finite");
    free(b);

    expect_reject("missing file", tmp_path("does_not_exist.bin"), "No such file");
    expect_reject("directory", tmp_dir, "not a regular file");
}

/* Read /tokens of a trace with plain HDF5. */
static int read_tokens(const char *path, int32_t *tok, int n)
{
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return -1;
    hid_t d = H5Dopen2(f, "/tokens", H5P_DEFAULT);
    hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
    hsize_t dims[1] = { 0 };
    int ok = sp >= 0 && H5Sget_simple_extent_ndims(sp) == 1 && H5Sget_simple_extent_dims(sp, dims, NULL) == 1 &&
             dims[0] == (hsize_t)n && H5Dread(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, tok) >= 0;
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    H5Fclose(f);
    return ok ? 0 : -1;
}

static int run_record(kv_err *err, const char *out, const char *a1, const char *a2, const char *a3, const char *a4)
{
    char *argv[16] = { "record", "--model", (char *)model_path, "--tokens", "64", "--chunk", "16", "-o", (char *)out };
    int argc = 9;
    const char *extra[] = { a1, a2, a3, a4 };
    for (int i = 0; i < 4 && extra[i]; i++) argv[argc++] = (char *)extra[i];
    argv[argc] = NULL;
    kv_err_clear(err);
    return kv_cmd_record(argc, argv, err);
}

static void test_record(void)
{
    enum { N = 64 };
    int32_t a[N], b[N];
    kv_err err;
    char *pa = tmp_path("greedy_a.h5"), *pb = tmp_path("greedy_b.h5");

    /* greedy: twice the same tokens, and they are the check value */
    CHECK(run_record(&err, pa, NULL, NULL, NULL, NULL) == KV_OK, "record: %s", err.msg);
    CHECK(run_record(&err, pb, NULL, NULL, NULL, NULL) == KV_OK, "record: %s", err.msg);
    CHECK(read_tokens(pa, a, N) == 0 && read_tokens(pb, b, N) == 0, "cannot read /tokens");
    CHECK(!memcmp(a, b, sizeof a), "two greedy recordings differ");
    for (int i = 0; i < NCHECK; i++) CHECK(a[i] == check_ids[i], "recorded token %d = %d, README says %d", i, a[i], check_ids[i]);

    /* sampling: the seed decides */
    CHECK(run_record(&err, pa, "--temperature", "1.0", "--seed", "7") == KV_OK, "record: %s", err.msg);
    CHECK(run_record(&err, pb, "--temperature", "1.0", "--seed", "7") == KV_OK, "record: %s", err.msg);
    CHECK(read_tokens(pa, a, N) == 0 && read_tokens(pb, b, N) == 0, "cannot read /tokens");
    CHECK(!memcmp(a, b, sizeof a), "two sampled recordings with one seed differ");
    CHECK(run_record(&err, pb, "--temperature", "1.0", "--seed", "8") == KV_OK, "record: %s", err.msg);
    CHECK(read_tokens(pb, b, N) == 0 && memcmp(a, b, sizeof a), "seeds 7 and 8 gave the same 64 tokens");

    /* prompt tokens are forced after BOS */
    CHECK(run_record(&err, pa, "--prompt-tokens", "5,6,7", NULL, NULL) == KV_OK, "record: %s", err.msg);
    CHECK(read_tokens(pa, a, N) == 0 && a[0] == 1 && a[1] == 5 && a[2] == 6 && a[3] == 7,
          "prompt: tokens start %d %d %d %d", a[0], a[1], a[2], a[3]);

    /* option errors: KV_EINPUT, one line naming the problem */
    struct { const char *a1, *a2; const char *want; } bad[] = {
        { "--tokens", "0", "--tokens" },
        { "--tokens", "-3", "--tokens" },
        { "--prompt-tokens", "1,x,3", "--prompt-tokens" },
        { "--prompt-tokens", "", "--prompt-tokens" },
        { "--prompt-tokens", "1,512", "vocabulary size 512" },
        { "--temperature", "-0.5", "--temperature" },
        { "--chunk", "0", "--chunk" },
        { "--bogus", NULL, "unknown option" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = run_record(&err, tmp_path("bad.h5"), bad[i].a1, bad[i].a2, NULL, NULL);
        CHECK(rc == KV_EINPUT && strstr(err.msg, bad[i].want) && !strchr(err.msg, '\n'),
              "%s %s: rc %d '%s'", bad[i].a1, bad[i].a2 ? bad[i].a2 : "", rc, err.msg);
    }
    char *no_model[] = { "record", "--tokens", "5", "-o", tmp_path("bad.h5"), NULL };
    kv_err_clear(&err);
    CHECK(kv_cmd_record(5, no_model, &err) == KV_EINPUT && strstr(err.msg, "--model"), "no --model: '%s'", err.msg);
    char *missing[] = { "record", "--model", tmp_path("missing.bin"), "--tokens", "5", "-o", tmp_path("bad.h5"), NULL };
    kv_err_clear(&err);
    CHECK(kv_cmd_record(7, missing, &err) == KV_EINPUT && strstr(err.msg, "missing.bin"), "missing model: '%s'", err.msg);
    char *too_short[] = { "record", "--model", (char *)model_path, "--tokens", "2", "--prompt-tokens", "3,4", "-o",
                          tmp_path("bad.h5"), NULL };
    kv_err_clear(&err);
    CHECK(kv_cmd_record(9, too_short, &err) == KV_EINPUT && strstr(err.msg, "too small"), "N < 1 + P: '%s'", err.msg);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL TMPDIR\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    model_path = argv[1];
    tmp_dir = argv[2];
    test_check_value();
    test_layer_io();
    test_bad_checkpoints();
    test_record();
    int rc = kv_test_result("test_llama");
    MPI_Finalize();
    return rc;
}
