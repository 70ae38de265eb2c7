# TurboQuant: the quantizer against Max's table, the prod mode's unbiased
# inner product, the round trip, partial_batch = partial; turboquant_replay:
# P-invariance (1 and 3 ranks), budgets, the demo against kivi.  ctest -L quant
kv_unit_test(test_turboquant ${CMAKE_CURRENT_SOURCE_DIR}/test_turboquant.c quant)
