# The driver side of the method hooks (src/methods/method.h): the feedback
# and select collectives (mpi/merge.h) under 1..4 ranks, and replays of
# h2o (feedback) and topk (select) across rank counts.
add_executable(test_hooks test_hooks.c testutil.c)
target_link_libraries(test_hooks PRIVATE kvcore)
foreach(np 1 2 3 4)
  kv_mpi_test(hooks_np${np} ${np} $<TARGET_FILE:test_hooks>)
  set_property(TEST hooks_np${np} APPEND PROPERTY LABELS numerics)
endforeach()
add_test(NAME hooks_replay COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_hooks.py ${KVSTREAM_EXE} ${KV_WORK}/hooks)
set_tests_properties(hooks_replay PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;hooks;numerics" TIMEOUT 600)
