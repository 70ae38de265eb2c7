# store= of the evicting methods (h2o, tova, snapkv hold their tokens as
# f16, kivi or TurboQuant rows; methods/store.h).  test_store: row formulas,
# read-back bounds, the tq rotated domain, f16 bitwise; store_*: the same
# through replay (capacity and memory = formula, f16 bitwise on a float16
# trace, P-invariance at 1 and 3 ranks).  ctest -L store
kv_unit_test(test_store ${CMAKE_CURRENT_SOURCE_DIR}/test_store.c store numerics)
foreach(part formula bitwise pinv)
  add_test(NAME store_${part} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_store.py ${part} ${KVSTREAM_EXE}
           ${KV_WORK})
  set_tests_properties(store_${part} PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;store;numerics" TIMEOUT 300)
endforeach()
