/* rng.c - xoshiro256** and splitmix-based counter hashes. */
#include <math.h>
#include "core/rng.h"

uint64_t kv_mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

uint64_t kv_hash4(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    return kv_mix64(kv_mix64(kv_mix64(kv_mix64(seed) ^ a) ^ b) ^ c);
}

static double u53(uint64_t x) { return (double)(x >> 11) * 0x1.0p-53; }

double kv_hash_uniform(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    return u53(kv_hash4(seed, a, b, c));
}

double kv_hash_normal(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t h = kv_hash4(seed, a, b, c);
    uint64_t h2 = kv_mix64(h ^ 0x5851f42d4c957f2dULL);
    double u1 = ((double)(h >> 11) + 0.5) * 0x1.0p-53; /* (0,1): log is finite */
    double u2 = u53(h2);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void kv_rng_seed(kv_rng *r, uint64_t seed, uint64_t stream, uint64_t rank)
{
    uint64_t x = kv_hash4(seed, stream, rank, 0x6b7673747265616dULL);
    for (int i = 0; i < 4; i++) r->s[i] = x = kv_mix64(x);
}

uint64_t kv_rng_next(kv_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return out;
}

double kv_rng_uniform(kv_rng *r) { return u53(kv_rng_next(r)); }

uint64_t kv_rng_below(kv_rng *r, uint64_t n)
{
    if (n <= 1) return 0;
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = kv_rng_next(r); while (x >= lim);
    return x % n;
}

double kv_rng_normal(kv_rng *r)
{
    double u1 = ((double)(kv_rng_next(r) >> 11) + 0.5) * 0x1.0p-53;
    double u2 = kv_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
