# Conformance: every method of the registry against its contract
# (tests/conform.h: hooks, bad parameters, checkpoints bitwise and corrupt
# ones refused, max_bytes, budget, P-invariance), from each method's
# .conform declaration; no list of methods.  The methods of tests/methods/
# are built into this binary and register themselves, so they are checked
# too.  Three parts (registry positions mod 3) to run side by side.
file(GLOB KV_TEST_METHODS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/methods/*.c)
set(KV_CONFORM_SRC ${CMAKE_CURRENT_SOURCE_DIR}/test_conformance.c ${CMAKE_CURRENT_SOURCE_DIR}/conform.c
    ${CMAKE_CURRENT_SOURCE_DIR}/conform_ckpt.c ${CMAKE_CURRENT_SOURCE_DIR}/emu.c
    ${CMAKE_CURRENT_SOURCE_DIR}/testutil.c ${KV_TEST_METHODS})
add_executable(test_conformance ${KV_CONFORM_SRC})
target_link_libraries(test_conformance PRIVATE kvcore)
target_include_directories(test_conformance PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
foreach(i 0 1 2)
  add_test(NAME conformance_${i}of3 COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 1 ${MPIEXEC_PREFLAGS}
           $<TARGET_FILE:test_conformance> ${i}/3)
  # the corruption sweeps take minutes under ASan+UBSan on 2 cores
  set(kv_conf_labels "unit;checkpoint;conformance")
  if(NOT i EQUAL 2)
    # under ASan+UBSan parts 0 and 1 take 10-20 minutes each on 2 cores: only
    # part 2 runs in the sanitizer pass (docs/TESTING.md)
    list(APPEND kv_conf_labels nosanitize)
  endif()
  set_tests_properties(conformance_${i}of3 PROPERTIES ENVIRONMENT "${KV_MPI_ENV}" LABELS "${kv_conf_labels}"
                       TIMEOUT 1800)
endforeach()
