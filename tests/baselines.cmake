# Baseline methods: window, sinks, h2o, uniform, topk, unmasked-window.
kv_unit_test(test_baselines ${CMAKE_CURRENT_SOURCE_DIR}/test_baselines.c baselines)
