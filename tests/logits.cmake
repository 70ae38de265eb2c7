# kernels/logits.h: packed-tile logits bitwise equal to kv_dot_fixed (topk's batch select).
kv_unit_test(test_logits ${CMAKE_CURRENT_SOURCE_DIR}/test_logits.c attn numerics)
# methods/topk/topk_pick.h: the picker's list against a sort (ties, signed zeros, many buffer cuts).
kv_unit_test(test_topk_pick ${CMAKE_CURRENT_SOURCE_DIR}/test_topk_pick.c numerics)
