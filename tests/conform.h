/* conform.h - the contract checks every method that declares .conform
 * passes (src/methods/method.h; docs/ADDING_A_METHOD.md), run by
 * tests/test_conformance.c over the whole registry.
 *
 * conform_method checks, for each case of ops->conform.spec:
 *   hooks      the required ones present, the select trio all or none,
 *              a budget text when the method takes budget=;
 *   parameters an unknown parameter and an out-of-range value refused with
 *              KV_EINPUT and one line naming the spec;
 *   checkpoints save/load resume bitwise, also in odd-sized pieces; a
 *              truncated or overwritten state refused (conform_ckpt.c);
 *   max_bytes  >= the peak of bytes(), on one rank and on rank 1 of 3;
 *   budget     NAME:budget=X on 1 and 3 emulated ranks (tests/emu.h) holds at
 *              most X bytes summed over the ranks at every moment;
 *   P          with pinv = KV_PINV_ROUNDING, the outputs on 2, 3 and 4
 *              emulated ranks equal those on 1 up to float rounding.
 * Failures go through CHECK (testutil.h). */
#ifndef KVSTREAM_TEST_CONFORM_H
#define KVSTREAM_TEST_CONFORM_H

#include <stdio.h>
#include <stdlib.h>
#include "methods/method.h"

/* ctx.window under KV_SEM_WINDOW_UNMASKED (the W an unmasked-window case
 * may name) */
#define CONFORM_WINDOW 80

/* The ctx of one rank holding a whole stream of n tokens (seed 42; under
 * KV_SEM_WINDOW_UNMASKED, window CONFORM_WINDOW). */
kv_method_ctx conform_ctx(int d, int dv, int64_t n, kv_semantics sem);

/* Every check on every case of ops->conform; the failures found (expected
 * ones included, testutil.h).  A method without a declaration fails. */
int conform_method(const kv_method_ops *ops);

/* The parts, for tests of the checker itself.  Hooks: 1 if all present.
 * The others check one spec text (a case), or NAME:budget=X and bad
 * parameters of their own. */
int conform_hooks(const kv_method_ops *ops);
void conform_params(const kv_method_ops *ops);
void conform_budget(const kv_method_ops *ops);
void conform_pinv(const kv_method_ops *ops, const char *spec);
void conform_checkpoints(const kv_method_ops *ops, const char *spec, kv_semantics sem); /* conform_ckpt.c */

/* In a file of tests/methods/: registers that file's method at start-up,
 * so the test binaries built with tests/methods/ see it in the registry. */
#define KV_TEST_METHOD(ops)                                                         \
    __attribute__((constructor)) static void kv_test_register_##ops(void)           \
    {                                                                               \
        kv_err e_ = { 0, "" };                                                      \
        if (kv_method_register(&ops, &e_)) { fprintf(stderr, "%s\n", e_.msg); abort(); } \
    }

#endif
