# Checkpoints in bounded pieces: writing and resuming a large
# saved state raises peak RSS by at most the 4 MiB piece + slack, writing it
# in one piece by about the state (tests/check_ckpt_memory.py).  Not under
# AddressSanitizer: its shadow memory and quarantine make RSS say nothing.
if(NOT KVSTREAM_SANITIZE AND NOT KVSTREAM_FUZZ)
  add_test(NAME ckpt_memory COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_ckpt_memory.py ${KVSTREAM_EXE}
           ${KV_WORK}/ckpt_memory)
  set_tests_properties(ckpt_memory PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;checkpoint;memory" TIMEOUT 300)
endif()
