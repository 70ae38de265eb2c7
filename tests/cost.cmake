# The per-query cost hook and the driver's derivation without one
# (method.h: kv_query_cost; replay/cost.h), against each layout's arithmetic.
kv_unit_test(test_cost "${CMAKE_CURRENT_SOURCE_DIR}/test_cost.c" cost)
