# Checkpoint byte buffers: bounded buffers and refilling readers
# give the bytes of whole ones, within their limit (tests/test_buf.c).
kv_unit_test(test_buf ${CMAKE_CURRENT_SOURCE_DIR}/test_buf.c checkpoint)
