/* cmd_record.c - `kvstream record` (see cmd/cmd_record.h and docs/RECORDING.md).
 *
 * Layout written (docs/TRACE_FORMAT.md): stream s = layer * n_kv_heads +
 * kv_head holds that kv head's post-RoPE keys and values, one row per
 * position.  Its queries are the g = n_heads / n_kv_heads query heads that
 * share the kv head, position-major: row i*g + r is query head kv_head*g + r
 * at position i, with query_pos i + 1 (causal, the token itself included).
 * /model_outputs holds the attention output the model itself computed for
 * each of those rows, so a replay can be checked against the model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "cmd/cmd.h"
#include "cmd/cmd_record.h"
#include "mpi/agree.h"
#include "model/llama.h"
#include "core/rng.h"
#include "io/trace.h"

enum { BOS = 1 };

/* Bound on the trace buffers of one block; the model's own KV cache is
 * separate and unavoidable. */
#define BLOCK_BYTES (64L << 20)

typedef struct {
    const char *model, *out;
    int64_t n;               /* positions to record */
    const char *prompt_text; /* --prompt-tokens as given */
    int32_t *prompt;         /* forced after BOS, malloc'ed */
    int64_t n_prompt;
    double temperature;      /* 0: greedy */
    uint64_t seed;
    int64_t chunk;           /* token-axis chunk, 0: the writer's default */
    int float16;             /* --dtype float16: keys/values/queries as IEEE half */
} record_opts;

#define O(member) KV_AT(record_opts, member)

static const kv_opt record_table[] = {
    { "model", 0, KV_OPT_STRING, O(model), .meta = "FILE", .def = "required", .help = "llama2.c checkpoint" },
    { "tokens", 0, KV_OPT_INT, O(n), .lo = 1, .hi = INT64_C(1) << 40, .meta = "N", .def = "required",
      .help = "positions to record (>= 1 + prompt tokens)" },
    { "prompt-tokens", 0, KV_OPT_STRING, O(prompt_text), .meta = "1,2,3",
      .help = "token ids forced after BOS, then the model generates" },
    { "temperature", 0, KV_OPT_DOUBLE, O(temperature), .dlo = 0, .dhi = INFINITY, .meta = "T",
      .help = "0: greedy (lowest id on ties); > 0: sample" },
    { "seed", 0, KV_OPT_INT, O(seed), .lo = 0, .hi = INT64_MAX, .meta = "X", .help = "sampling seed" },
    { "chunk", 0, KV_OPT_INT, O(chunk), .lo = 1, .hi = INT64_C(1) << 30, .meta = "C", .def = "4096",
      .help = "token-axis chunk of the trace" },
    { "dtype", 0, KV_OPT_CHOICE, O(float16), .choices = "float32|float16",
      .help = "keys/values/queries on disk (/model_outputs stays float32)" },
    { "output", 'o', KV_OPT_STRING, O(out), .meta = "FILE", .def = "required", .help = "the trace to write" },
    { 0 } };

/* "1,2,3" -> token ids; empty items, signs and non-digits are rejected. */
static int parse_tokens(const char *s, record_opts *o, kv_err *err)
{
    int64_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    free(o->prompt);
    o->prompt = kv_malloc((size_t)cap * sizeof(int32_t), err);
    o->n_prompt = 0;
    if (!o->prompt) return err->code;
    const char *p = s;
    for (;;) {
        const char *q = p;
        long long v = 0;
        while (*q >= '0' && *q <= '9' && v <= INT32_MAX) v = v * 10 + (*q++ - '0');
        if (q == p || (*q && *q != ',') || v > INT32_MAX)
            return kv_seterr(err, KV_EINPUT, "record: --prompt-tokens: '%s' is not a comma-separated list of token ids "
                             "(problem at item %lld)", s, (long long)o->n_prompt + 1);
        o->prompt[o->n_prompt++] = (int32_t)v;
        if (!*q) return KV_OK;
        p = q + 1;
    }
}

/* *help: --help was given (and printed) */
static int parse_opts(int argc, char **argv, record_opts *o, int *help, kv_err *err)
{
    kv_cmdline c = {
        .cmd = "record",
        .usage = "--model FILE --tokens N [--prompt-tokens 1,2,3] [--temperature T --seed X] -o trace.h5",
        .about = "Run a llama2.c model and record every layer's and kv head's keys, values and queries as a\n"
                 "kvtrace (docs/RECORDING.md).  Position 0 is BOS (id 1), positions 1..P the prompt tokens,\n"
                 "the rest are generated (greedy, or sampled when T > 0).  Serial: rank 0 records.",
        .groups = { { NULL, record_table, o } },
    };
    if (kv_opts_parse(&c, argc, argv, stdout, NULL, help, err) || *help) return err->code;
    if (o->prompt_text && parse_tokens(o->prompt_text, o, err)) return err->code;
    if (!o->model) return kv_seterr(err, KV_EINPUT, "record: --model FILE is required");
    if (!o->n) return kv_seterr(err, KV_EINPUT, "record: --tokens N (positions to record, >= 1) is required");
    if (!o->out) return kv_seterr(err, KV_EINPUT, "record: -o FILE (the trace to write) is required");
    if (o->n < o->n_prompt + 1)
        return kv_seterr(err, KV_EINPUT, "record: --tokens %lld is too small for BOS + %lld prompt tokens (need >= %lld)",
                         (long long)o->n, (long long)o->n_prompt, (long long)o->n_prompt + 1);
    return KV_OK;
}

/* Trace rows of one block of positions, [stream][row][head_dim]. */
typedef struct {
    int64_t B, S, g, hd;     /* positions per block, streams, queries per position, head_dim */
    float *K, *V, *Q, *Z;
    int32_t *tok;
    int64_t *qpos;
} block_buf;

static int block_new(block_buf *b, int64_t B, int64_t S, int64_t g, int64_t hd, kv_err *err)
{
    memset(b, 0, sizeof *b);
    b->B = B; b->S = S; b->g = g; b->hd = hd;
    size_t kv = (size_t)(S * B * hd), q = kv * (size_t)g;
    b->K = kv_malloc(kv * sizeof(float), err);
    b->V = kv_malloc(kv * sizeof(float), err);
    b->Q = kv_malloc(q * sizeof(float), err);
    b->Z = kv_malloc(q * sizeof(float), err);
    b->tok = kv_malloc((size_t)B * sizeof(int32_t), err);
    b->qpos = kv_malloc((size_t)(B * g) * sizeof(int64_t), err);
    return err->code;
}

static void block_free(block_buf *b)
{
    free(b->K); free(b->V); free(b->Q); free(b->Z); free(b->tok); free(b->qpos);
}

/* Copy what every layer saw at position pos (row b of the block). */
static void block_put(block_buf *bb, const kv_llama_state *st, const kv_llama_config *c, int64_t b, int64_t pos, int token)
{
    int64_t hd = bb->hd, g = bb->g, B = bb->B;
    size_t row = (size_t)hd * sizeof(float);
    bb->tok[b] = token;
    for (int64_t r = 0; r < g; r++) bb->qpos[b * g + r] = pos + 1;
    for (int l = 0; l < c->n_layers; l++) {
        kv_llama_layer_io io;
        kv_llama_layer(st, l, &io);
        for (int h = 0; h < c->n_kv_heads; h++) {
            int64_t s = (int64_t)l * c->n_kv_heads + h;
            memcpy(bb->K + (s * B + b) * hd, io.k + h * hd, row);
            memcpy(bb->V + (s * B + b) * hd, io.v + h * hd, row);
            for (int64_t r = 0; r < g; r++) {
                int64_t qh = h * g + r, j = (s * B + b) * g + r;
                memcpy(bb->Q + j * hd, io.q + qh * hd, row);
                memcpy(bb->Z + j * hd, io.out + qh * hd, row);
            }
        }
    }
}

/* Write positions [i0, i0 + cnt) held in rows 0..cnt-1 of the block. */
static int block_flush(block_buf *bb, kv_trace_writer *w, int64_t i0, int64_t cnt, kv_err *err)
{
    int64_t B = bb->B, g = bb->g, hd = bb->hd;
    for (int64_t s = 0; s < bb->S; s++) {
        const float *K = bb->K + s * B * hd, *V = bb->V + s * B * hd;
        const float *Q = bb->Q + s * B * g * hd, *Z = bb->Z + s * B * g * hd;
        if (kv_trace_write_kv(w, s, i0, cnt, K, V, err) || kv_trace_write_queries(w, s, i0 * g, cnt * g, Q, err) ||
            kv_trace_write_model_outputs(w, s, i0 * g, cnt * g, Z, err))
            return err->code;
    }
    if (kv_trace_write_tokens(w, i0, cnt, bb->tok, err) || kv_trace_write_query_pos(w, i0 * g, cnt * g, bb->qpos, err))
        return err->code;
    return KV_OK;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Run the model over o->n positions, writing the trace block by block. */
static int record(const record_opts *o, kv_err *err)
{
    kv_llama *m = kv_llama_load(o->model, err);
    if (!m) return err->code;
    const kv_llama_config *c = kv_llama_get_config(m);
    for (int64_t i = 0; i < o->n_prompt; i++)
        if (o->prompt[i] >= c->vocab_size) {
            kv_seterr(err, KV_EINPUT,
                      "record: --prompt-tokens: token id %d (item %lld) is not below the vocabulary size %d of %s",
                      (int)o->prompt[i], (long long)i + 1, c->vocab_size, o->model);
            kv_llama_free(m);
            return err->code;
        }

    int64_t g = c->n_heads / c->n_kv_heads, hd = c->head_dim;
    int64_t S = (int64_t)c->n_layers * c->n_kv_heads, N = o->n;
    kv_trace_spec spec = {
        .S = S, .n = N, .m = N * g, .d = hd, .dv = hd, .chunk = o->chunk,
        .scale = 1.0 / sqrt((double)hd), .source = base_name(o->model),
        .seed = o->temperature > 0 ? (int64_t)(o->seed & INT64_MAX) : -1,
        .with_tokens = 1, .with_model_outputs = 1, .float16 = o->float16,
        .n_layers = c->n_layers, .n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads, .head_dim = hd,
    };
    /* One block per chunk when it fits, so each write fills whole chunks. */
    int64_t per_pos = S * hd * (int64_t)sizeof(float) * (2 + 2 * g);
    int64_t B = o->chunk > 0 ? o->chunk : 4096;
    if (B > BLOCK_BYTES / per_pos) B = BLOCK_BYTES / per_pos > 0 ? BLOCK_BYTES / per_pos : 1;
    if (B > N) B = N;

    kv_llama_state *st = kv_llama_state_new(m, err);
    block_buf bb = { 0 };
    kv_trace_writer *w = NULL;
    if (st && !block_new(&bb, B, S, g, hd, err)) w = kv_trace_create(o->out, MPI_COMM_NULL, &spec, err);
    kv_rng rng;
    kv_rng_seed(&rng, o->seed, 0, 0);

    int token = BOS;
    for (int64_t pos = 0; w && pos < N && !err->code; pos++) {
        const float *logits;
        if (kv_llama_step(m, st, token, pos, &logits, err)) break;
        block_put(&bb, st, c, pos % B, pos, token);
        if ((pos + 1) % B == 0 || pos + 1 == N) {
            int64_t cnt = pos % B + 1;
            if (block_flush(&bb, w, pos + 1 - cnt, cnt, err)) break;
        }
        if (pos < o->n_prompt) token = o->prompt[pos];
        else if (o->temperature > 0) token = kv_llama_sample(logits, c->vocab_size, o->temperature, &rng);
        else token = kv_llama_argmax(logits, c->vocab_size);
    }
    if (w) {
        kv_trace_writer_close(w, err);
        if (err->code) remove(o->out); /* no half-written trace left behind */
    }
    if (!err->code)
        printf("recorded %lld positions, %lld streams (%d layers x %d kv heads), %lld queries -> %s\n",
               (long long)N, (long long)S, c->n_layers, c->n_kv_heads, (long long)(N * g), o->out);
    block_free(&bb);
    kv_llama_state_free(st);
    kv_llama_free(m);
    return err->code;
}

int kv_cmd_record(int argc, char **argv, kv_err *err)
{
    record_opts o = { 0 };
    int help = 0;
    if (!parse_opts(argc, argv, &o, &help, err) && !help) record(&o, err);
    free(o.prompt);
    return err->code;
}

/* serial: rank 0 records, the others wait for its verdict */
int kv_run_record(int argc, char **argv, MPI_Comm comm, kv_err *err)
{
    int rank;
    MPI_Comm_rank(comm, &rank);
    if (rank == 0) kv_cmd_record(argc, argv, err);
    return kv_agree(comm, err);
}
