/* fuzz_spec.c - libFuzzer target: the --methods parser and every method's
 * parameter checks (create + free of one instance per spec). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "methods/method.h"
#include "core/spec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    kv_spec *specs = NULL;
    int n = 0;
    kv_err err = { 0, "" };
    if (kv_spec_parse_list(s, &specs, &n, &err) == KV_OK) {
        kv_method_ctx ctx = { .d = 4, .dv = 3, .scale = 0.5, .n_total = 64, .nranks = 2, .rank = 1,
                              .shard_tokens = 32, .semantics = KV_SEM_WINDOW_UNMASKED, .window = 8 };
        kv_err e2 = { 0, "" };
        kv_method_check_specs(specs, n, &ctx, &e2);
        if (e2.code != KV_OK && e2.msg[0] == '\0') abort(); /* an error must say what */
        free(specs);
    } else if (err.msg[0] == '\0') {
        abort();
    }
    free(s);
    return 0;
}
