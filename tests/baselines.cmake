# Baseline methods: window, sinks, h2o, uniform, topk, unmasked-window.
# emu.c: P ranks emulated in one process, shared with test_global_methods
kv_unit_test(test_baselines "${CMAKE_CURRENT_SOURCE_DIR}/test_baselines.c;${CMAKE_CURRENT_SOURCE_DIR}/emu.c" baselines numerics)
