# Method checkpoints: save/load bitwise resume, malformed input, max_bytes.
kv_unit_test(test_checkpoint_methods ${CMAKE_CURRENT_SOURCE_DIR}/test_checkpoint_methods.c checkpoint)
