# SubGen method and its samplers (src/methods/subgen/, src/methods/common/sampler.c).
# three parts (every third test function), side by side under ctest -j2
kv_unit_test_parts(test_subgen ${CMAKE_CURRENT_SOURCE_DIR}/test_subgen.c 3 subgen numerics)
# part 1 holds the statistical accuracy, checkpoint and joint tests (about a
# minute on 2 busy cores): tier1; the other parts stay in tier0
set_property(TEST test_subgen_part1 APPEND PROPERTY LABELS tier1)
