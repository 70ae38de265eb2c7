# Method checkpoints: save/load bitwise resume, malformed input, max_bytes.
# Four parts (every 4th case each), side by side under ctest -j2; tier1, as
# the whole takes longer than tier0's minute.
kv_unit_test_parts(test_checkpoint_methods ${CMAKE_CURRENT_SOURCE_DIR}/test_checkpoint_methods.c 4
                   checkpoint numerics tier1)
foreach(part 0 1 2 3)
  # the corruption sweeps take ~5 minutes (all parts) under ASan+UBSan on 2 cores
  set_tests_properties(test_checkpoint_methods_part${part} PROPERTIES TIMEOUT 1800)
endforeach()
