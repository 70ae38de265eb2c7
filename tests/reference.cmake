# Reference modes: --reference stream under a --max-memory below
# the trace gives memory's errors; none; small exact-only checkpoints
# (tests/check_reference.py).  RSS is meaningless under the sanitizers.
if(KVSTREAM_SANITIZE OR KVSTREAM_FUZZ)
  set(kv_ref_rss --no-rss)
else()
  set(kv_ref_rss "")
endif()
add_test(NAME reference_modes COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_reference.py ${KVSTREAM_EXE}
         ${KV_WORK}/reference 2 ${kv_ref_rss})
set_tests_properties(reference_modes PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;memory;checkpoint" TIMEOUT 900)
