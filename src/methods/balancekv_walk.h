/* balancekv_walk.h - BalanceKV's self-balancing walk (ALGORITHMS.md
 * section 4d): the +-1 colouring of one halving's block of rows, for
 * balancekv.c (which keeps a colour class and carries it up its levels). */
#ifndef KVSTREAM_BALANCEKV_WALK_H
#define KVSTREAM_BALANCEKV_WALK_H

#include <stdint.h>

typedef struct {
    const float *K, *V; /* n x d keys, n x dv values, row-major */
    int64_t n;
    int d, dv;
    double scale;       /* the kernel's exp(scale <k, k'>) */
    double c;           /* threshold over the block's mean squared feature norm */
    uint64_t tag;       /* coins: kv_hash_uniform(tag, halving, row, 0) */
    uint64_t halving;
} kv_bkv_block;

/* sign[i] = +1 or -1 for the block's rows i < n, walked in order; returns
 * the number of +1 signs, or -1 (sign untouched) without scratch memory. */
int64_t kv_bkv_walk(const kv_bkv_block *blk, int8_t *sign);

#endif
