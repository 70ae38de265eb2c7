/* placement.c - the process's CPU set (see placement.h). */
#define _GNU_SOURCE
#include <sched.h>
#include "core/placement.h"

int kv_affinity_cpus(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    return CPU_COUNT(&set);
}
