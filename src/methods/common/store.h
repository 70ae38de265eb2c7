/* store.h - how an evicting method holds its tokens: store=f32 (floats, as
 * before), f16 (IEEE half), kivi2|kivi4|kivi8 (KIVI-style asymmetric
 * integer codes, per token for keys and values alike) or tq2|tq3|tq4
 * (TurboQuant codes, methods/tqcodec.h).  ALGORITHMS.md section 4h.
 *
 * A held token is one row of kv_store_row_bytes bytes:
 *   f16:   d + dv halves;
 *   kiviB: for the key, per group of KV_STORE_GROUP channels a half zero
 *          point and a half scale (quant.h), then d codes of B bits packed;
 *          the value likewise over its dv channels;
 *   tqB:   the key's norm (float) and d codes of B bits of its rotated unit
 *          vector under the Lloyd-Max book for dimension d; the value
 *          likewise (its own rotation and book).
 * No float residual: per-token quantisation needs no complete group of
 * tokens, so every held token is quantised from its arrival on.
 *
 * Reading back: kv_store_keys / kv_store_vals decode rows into the store's
 * domain, where a query prepared by kv_store_queries gives the same logit
 * as in the original one (tq: the rotated domain, the query rotated once
 * per call instead of every key back), and kv_store_finish takes the value
 * sums of partial states back (tq: the value rotation's transpose).  For
 * f16 and kivi the domain is the original one and both are no-ops.
 * f32 has no rows here: the methods keep their float arrays (slots.h,
 * tokring.h).  Used by h2o, tova, snapkv (through slots.h) and window,
 * sinks (through tokring.h). */
#ifndef KVSTREAM_STORE_H
#define KVSTREAM_STORE_H

#include <stddef.h>
#include <stdint.h>
#include "core/kverr.h"
#include "methods/common/tqcodec.h"

/* the store= choices, as KV_PARAM_ENUM indices: 0 = f32 */
#define KV_STORE_CHOICES "f32|f16|kivi2|kivi4|kivi8|tq2|tq3|tq4"
#define KV_STORE_HELP "how held tokens are kept: f32, f16 (half), kivi2|4|8 (per-token asymmetric codes), tq2|3|4 (TurboQuant codes); budget= buys more tokens at fewer bits"
#define KV_STORE_GROUP 32 /* channels per kivi zero point and scale */

enum { KV_STORE_F32 = 0, KV_STORE_F16, KV_STORE_KIVI, KV_STORE_TQ };

typedef struct {
    int which, kind, bits, d, dv;
    int owner;           /* counts the fixed part (rotations): rank 0 only */
    size_t kbytes, row;  /* bytes of a key's part of a row; of a row */
    float *Rk, *Rv;      /* tq: d x d and dv x dv rotations */
    kv_tq_book bk, bv;   /* tq: codebooks for d and dv */
    float *y;            /* tq: encode scratch, max(d, dv) floats */
    double *u;           /* tq: kv_store_finish's scratch, dv doubles */
} kv_store;

/* The store of choice `which` (index into KV_STORE_CHOICES) for keys of d
 * and values of dv floats; tq rotations keyed by (seed, stream), so every
 * rank encodes a token alike.  owner: 1 on the rank that counts the fixed
 * bytes.  KV_EINTERNAL without memory. */
int kv_store_init(kv_store *s, int which, int d, int dv, uint64_t seed, int64_t stream, int owner, kv_err *err);
void kv_store_free(kv_store *s);

/* 1 for every store but f32. */
static inline int kv_store_coded(const kv_store *s) { return s && s->kind != KV_STORE_F32; }

/* Bytes of one held row of choice `which` (f32: (d + dv) floats). */
size_t kv_store_row_bytes(int which, int d, int dv);

/* Bytes the store holds besides its rows (tq rotations and books), on the
 * owner; 0 elsewhere and for the other stores. */
int64_t kv_store_fixed_bytes(const kv_store *s);

/* kv_store_fixed_bytes of the owner, from the choice alone (budgets). */
int64_t kv_store_fixed_of(int which, int d, int dv);

/* The choice's name ("kivi4"). */
const char *kv_store_name(int which);

/* "<who>: store=NAME cannot hold a key or value beyond half's range
 * (|x| > 65504); use store=f32" (KV_EINPUT): kv_store_encode said -1. */
int kv_store_refused(const kv_store *s, const char *who, kv_err *err);

/* Encode key k and value v into row (kv_store_row_bytes bytes).  -1 when a
 * number cannot be held (f16: |x| > 65504; kivi: a group's minimum or
 * scale beyond half's range, quant.h). */
int kv_store_encode(kv_store *s, const float *k, const float *v, uint8_t *row);

/* n rows (consecutive, s->row bytes apart) -> n keys (n x d) / values
 * (n x dv) in the store's domain. */
void kv_store_keys(const kv_store *s, const uint8_t *rows, size_t n, float *K);
void kv_store_vals(const kv_store *s, const uint8_t *rows, size_t n, float *V);

/* nq queries into the store's domain (out: nq x d); returns Q itself when
 * the domain is the original one, else out. */
const float *kv_store_queries(const kv_store *s, const float *Q, int nq, float *out);

/* Grow-only scratch for kv_store_prep. */
typedef struct {
    float *q;
    size_t cap;
} kv_qprep;

/* kv_store_queries into sc (grown when nq queries do not fit; no
 * allocation once the largest call was seen); NULL without memory.
 * kv_qprep_free releases it. */
const float *kv_store_prep(const kv_store *s, kv_qprep *sc, const float *Q, int nq);
void kv_qprep_free(kv_qprep *sc);

/* The value sums of nq partial states back to the original domain. */
void kv_store_finish(const kv_store *s, double *st, int nq);

/* 1 if a row read from a checkpoint decodes to finite numbers with sane
 * scales (kivi) and norms (tq); tmp: d + dv floats. */
int kv_store_row_ok(const kv_store *s, const uint8_t *row, float *tmp);

#endif
