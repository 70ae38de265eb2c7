# The replay's peak RSS against what it accounts for, on a trace where the
# old whole-batch V^T V staging took 2 GiB per rank (tests/check_rss.py).
# Native and portable builds only: under AddressSanitizer (and the fuzz
# build) shadow memory and quarantine make RSS say nothing about our buffers.
if(NOT KVSTREAM_SANITIZE AND NOT KVSTREAM_FUZZ)
  add_test(NAME memory_rss COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_rss.py ${KVSTREAM_EXE} ${KV_WORK}/rss)
  set_tests_properties(memory_rss PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;memory" TIMEOUT 300)
endif()
