/* llama.h - load a llama2.c checkpoint and run its forward pass one token at
 * a time, exposing what attention saw (tests/data/README.md).
 *
 * The model (weights, read-only) and the run state (activations and the
 * model's own KV cache) are separate objects, so one loaded model can drive
 * several independent decodes.  The KV cache grows on demand: positions may
 * go beyond the checkpoint's seq_len (RoPE is computed, not tabled).
 *
 * Matrix-vector products are split over OpenMP threads by rows and attention
 * by query heads, each summed by one thread, so a given build gives the same
 * bits for any thread count. */
#ifndef KVSTREAM_LLAMA_H
#define KVSTREAM_LLAMA_H

#include <stdint.h>
#include "core/kverr.h"
#include "core/rng.h"

typedef struct {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads;
    int vocab_size;        /* absolute value of the header field */
    int seq_len;           /* trained context; informational only */
    int head_dim;          /* dim / n_heads */
    int shared_classifier; /* 1: logits use the token embedding */
} kv_llama_config;

typedef struct kv_llama kv_llama;
typedef struct kv_llama_state kv_llama_state;

/* Load and validate a checkpoint.  A missing or unreadable file, a header out
 * of range, or a size that does not match the header exactly gives KV_EINPUT
 * with one line naming the file and the problem. */
kv_llama *kv_llama_load(const char *path, kv_err *err);
void kv_llama_free(kv_llama *m);
const kv_llama_config *kv_llama_get_config(const kv_llama *m);

kv_llama_state *kv_llama_state_new(const kv_llama *m, kv_err *err);
void kv_llama_state_free(kv_llama_state *st);

/* Run token `token` at position pos.  pos may be at most the number of
 * positions already run (pos < that rewinds: later cache entries are dropped).
 * On success *logits (vocab_size floats) stays valid until the next step. */
int kv_llama_step(const kv_llama *m, kv_llama_state *st, int token, int64_t pos,
                  const float **logits, kv_err *err);

/* What layer `layer` computed in the last step (valid until the next step). */
typedef struct {
    const float *q;   /* [n_heads][head_dim] query, after RoPE */
    const float *k;   /* [n_kv_heads][head_dim] key of this position, after RoPE */
    const float *v;   /* [n_kv_heads][head_dim] value of this position */
    const float *out; /* [n_heads][head_dim] attention output of each query head */
} kv_llama_layer_io;

void kv_llama_layer(const kv_llama_state *st, int layer, kv_llama_layer_io *io);

/* Index of the largest logit, lowest index on ties. */
int kv_llama_argmax(const float *logits, int n);
/* Sample from softmax(logits / temperature), temperature > 0. */
int kv_llama_sample(const float *logits, int n, double temperature, kv_rng *rng);

#endif
