/* cmd_record.h - `kvstream record`: run a llama2.c model and record what its
 * attention saw as a kvtrace file (docs/RECORDING.md).
 *
 *   kvstream record --model FILE --tokens N [--prompt-tokens 1,2,3]
 *                   [--temperature T] [--seed X] [--chunk C] -o trace.h5
 *
 * The sequence starts with BOS (id 1) at position 0, then the prompt tokens
 * are forced at positions 1..P, then the model generates (greedy argmax,
 * lowest id on ties; or sampling at temperature T > 0 with a kv_rng seeded by
 * X).  N positions are recorded; N >= P + 1.
 *
 * argv[0] is the command word ("record") and is skipped, so main can pass
 * (argc - 1, argv + 1).  Errors (options, model file, output file) come back
 * in err, KV_EINPUT for bad input; nothing is printed except a one-line
 * summary on success (and the usage for --help). */
#ifndef KVSTREAM_CMD_RECORD_H
#define KVSTREAM_CMD_RECORD_H

#include "core/kverr.h"

int kv_cmd_record(int argc, char **argv, kv_err *err);

#endif
