/* vshuf.h - lane shuffles of GNU vectors by an index vector, for GCC and
 * clang alike.
 *
 *   KV_SHUF1(v, ix)     lane l = v[ix[l] mod N]
 *   KV_SHUF2(a, b, ix)  lane l = (a ++ b)[ix[l] mod 2N]
 *
 * GCC's __builtin_shuffle takes run-time indices; clang has no such
 * builtin (its __builtin_shufflevector wants constants), so under clang (the
 * fuzz build) the lanes are picked one by one: the same values, slower. */
#ifndef KVSTREAM_VSHUF_H
#define KVSTREAM_VSHUF_H

#if defined(__clang__)
#define KV_SHUF1(v, ix) __extension__({                                           \
        __typeof__(+(v)) v_ = (v), r_;                                               \
        __typeof__(+(ix)) i_ = (ix);                                                 \
        const int n_ = (int)(sizeof r_ / sizeof r_[0]);                           \
        for (int l_ = 0; l_ < n_; l_++) r_[l_] = v_[i_[l_] & (n_ - 1)];           \
        r_; })
#define KV_SHUF2(a, b, ix) __extension__({                                        \
        __typeof__(+(a)) a_ = (a), b_ = (b), r_;                                     \
        __typeof__(+(ix)) i_ = (ix);                                                 \
        const int n_ = (int)(sizeof r_ / sizeof r_[0]);                           \
        for (int l_ = 0; l_ < n_; l_++) {                                         \
            int j_ = i_[l_] & (2 * n_ - 1);                                       \
            r_[l_] = j_ < n_ ? a_[j_] : b_[j_ - n_];                              \
        }                                                                         \
        r_; })
#else
#define KV_SHUF1(v, ix) __builtin_shuffle(v, ix)
#define KV_SHUF2(a, b, ix) __builtin_shuffle(a, b, ix)
#endif

#endif
