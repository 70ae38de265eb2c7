# The PyTorch recorder (python/kvstream_record): a llama2.c model written in
# torch records stories260K through the package; compared with `kvstream
# record` and replayed with exact attention (tests/test_torch_record.py).
# Needs Debian's python3-torch; without it the test fails with one line.
#   ctest -R torch_record --output-on-failure
add_test(NAME torch_record COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/test_torch_record.py ${KVSTREAM_EXE}
         ${KV_MODEL} ${KV_WORK}/torch_record)
set_tests_properties(torch_record PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "record;numerics" TIMEOUT 300)
