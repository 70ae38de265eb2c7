# QJL's own kernels (kernels/qjl_kern.h): the sketch dots bitwise
# kv_dot_fixed's, the norms, the bit planes' layout, and the planes' fold
# within its rounding bound.  ctest -R qjl
kv_unit_test(test_qjl_kern ${CMAKE_CURRENT_SOURCE_DIR}/test_qjl_kern.c quant numerics)
