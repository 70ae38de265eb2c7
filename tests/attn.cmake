# Attention kernels: the multi-position (causal variable-length) fold against
# the one-prefix kernels, and its thread-count independence.
kv_unit_test(test_attn_batch ${CMAKE_CURRENT_SOURCE_DIR}/test_attn_batch.c attn numerics)
# The vectorised exp of the exact kernels against its documented bound.
kv_unit_test(test_expf ${CMAKE_CURRENT_SOURCE_DIR}/test_expf.c attn numerics)
# The paged fold (tokring, rowpool) against a double softmax computed from
# the rows, and bitwise against the contiguous kernel on the same rows.
kv_unit_test(test_attn_pages ${CMAKE_CURRENT_SOURCE_DIR}/test_attn_pages.c attn numerics)
# The evictors' held-rows attention: logits bitwise kv_held_logit's, weights
# against libm's exp, sums against a double softmax, tile by tile = whole.
kv_unit_test(test_held ${CMAKE_CURRENT_SOURCE_DIR}/test_held.c attn numerics)
