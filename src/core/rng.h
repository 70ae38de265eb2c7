/* rng.h - deterministic random numbers.
 *
 * Two kinds: a sequential generator (xoshiro256**) for sketches, seeded by
 * mixing (seed, stream, rank) so every rank and stream has its own sequence;
 * and a counter-based hash (kv_hash_*) used by the trace generator so the value
 * of element (s, i, c) depends only on the seed and its coordinates, never
 * on the rank count or the order of generation. */
#ifndef KVSTREAM_RNG_H
#define KVSTREAM_RNG_H

#include <stdint.h>

typedef struct { uint64_t s[4]; } kv_rng;

void kv_rng_seed(kv_rng *r, uint64_t seed, uint64_t stream, uint64_t rank);
uint64_t kv_rng_next(kv_rng *r);
double kv_rng_uniform(kv_rng *r);          /* in [0, 1) with 53 random bits */
uint64_t kv_rng_below(kv_rng *r, uint64_t n); /* uniform in [0, n), unbiased */
double kv_rng_normal(kv_rng *r);

uint64_t kv_mix64(uint64_t x);             /* splitmix64 finaliser */
uint64_t kv_hash4(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);
/* Standard normal deviate keyed by (seed, a, b, c). */
double kv_hash_normal(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);
/* Uniform in [0,1) keyed by (seed, a, b, c). */
double kv_hash_uniform(uint64_t seed, uint64_t a, uint64_t b, uint64_t c);

#endif
