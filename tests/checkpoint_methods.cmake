# Method checkpoints: save/load bitwise resume, malformed input, max_bytes.
# Four parts (every 4th case each, KV_CKPT_PART), side by side under
# ctest -j2; tier1, as the whole takes longer than tier0's minute.
add_executable(test_checkpoint_methods test_checkpoint_methods.c testutil.c)
target_link_libraries(test_checkpoint_methods PRIVATE kvcore)
target_include_directories(test_checkpoint_methods PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
foreach(part 0 1 2 3)
  add_test(NAME test_checkpoint_methods_part${part} COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 1
           ${MPIEXEC_PREFLAGS} $<TARGET_FILE:test_checkpoint_methods>)
  # the corruption sweeps take ~5 minutes (all parts) under ASan+UBSan on 2 cores
  set_tests_properties(test_checkpoint_methods_part${part} PROPERTIES LABELS "unit;checkpoint;numerics;tier1"
                       ENVIRONMENT "${KV_MPI_ENV};KV_CKPT_PART=${part}/4" TIMEOUT 1800 PROCESSORS 1)
endforeach()
