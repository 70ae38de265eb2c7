# lsh: MagicPIG's LSH sampling against a brute force at 1..3 emulated ranks,
# exact at threshold 0, an unbiased denominator over seeds, its read counts.
kv_unit_test(test_lsh "${CMAKE_CURRENT_SOURCE_DIR}/test_lsh.c;${CMAKE_CURRENT_SOURCE_DIR}/emu.c" baselines)
# its SimHash kernel: every code bit the sign of kv_dot_fixed's dot.
kv_unit_test(test_simhash ${CMAKE_CURRENT_SOURCE_DIR}/test_simhash.c baselines numerics)
