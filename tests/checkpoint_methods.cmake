# Method checkpoints: save/load bitwise resume, malformed input, max_bytes.
kv_unit_test(test_checkpoint_methods ${CMAKE_CURRENT_SOURCE_DIR}/test_checkpoint_methods.c checkpoint)
# the corruption sweeps take ~5 minutes under ASan+UBSan on 2 cores
set_tests_properties(test_checkpoint_methods PROPERTIES TIMEOUT 1800)
