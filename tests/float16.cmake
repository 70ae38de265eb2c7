# float16 (IEEE half) traces: gen/record --dtype float16, the reader's
# float16 path (HDF5 converts to float32 on read), refusal of other 2-byte
# floats, non-finite half values, and the npz converter's --dtype /
# --bfloat16-bits, exact's store=f16.  All carry the label "float16":
#   ctest -L float16 --output-on-failure
foreach(part gen exact bitwise store nonfinite layout npz)
  add_test(NAME float16_${part} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_float16.py ${part} ${KVSTREAM_EXE} ${KV_WORK})
  set_tests_properties(float16_${part} PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "float16" TIMEOUT 600)
endforeach()
add_test(NAME float16_record COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_float16.py record ${KVSTREAM_EXE} ${KV_WORK} ${KV_MODEL})
set_tests_properties(float16_record PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "float16;record" TIMEOUT 600)
# replays compared with a float64 reference / bitwise across paths: rounding
set_property(TEST float16_exact float16_bitwise float16_store APPEND PROPERTY LABELS numerics)
# half <-> float arrays (kernels/half.h) against a table of every finite half
kv_unit_test(test_half ${CMAKE_CURRENT_SOURCE_DIR}/test_half.c float16 numerics)
