# BalanceKV (src/methods/balancekv.c): exact when the shard fits, seeds,
# error against budget and against fair coins (statistical), memory budget.
kv_unit_test(test_balancekv ${CMAKE_CURRENT_SOURCE_DIR}/test_balancekv.c methods numerics)
