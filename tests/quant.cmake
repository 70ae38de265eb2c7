# Quantised caches: kivi and qjl.  test_quant: half precision,
# b-bit quantisation, the sealed checkpoint envelope, QJL's unbiased
# estimator; quant_replay: accuracy, memory, budgets, P-invariance,
# determinism and bits_per_token through replay.  ctest -L quant
kv_unit_test(test_quant ${CMAKE_CURRENT_SOURCE_DIR}/test_quant.c quant numerics)
add_test(NAME quant_replay COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_quant.py ${KVSTREAM_EXE}
         ${KV_WORK}/quant)
set_tests_properties(quant_replay PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;quant;numerics" TIMEOUT 900)
# the compressed-domain query kernels (kernels/qattn.h) against attention
# over the decoded cache in double, on every layout path, at 1 and 2 threads
kv_unit_test(test_qattn ${CMAKE_CURRENT_SOURCE_DIR}/test_qattn.c quant numerics)
