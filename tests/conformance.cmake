# Conformance: every method of the registry against its contract
# (tests/conform.h: hooks, bad parameters, checkpoints bitwise and corrupt
# ones refused, max_bytes, budget, P-invariance), from each method's
# .conform declaration; no list of methods.  The methods of tests/methods/
# are built into this binary and register themselves, so they are checked
# too.  Six parts (registry positions mod 6) to run side by side; tier1,
# not tier0, for all its unit-test form: the checkpoint sweeps take minutes.
file(GLOB KV_TEST_METHODS CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/methods/*.c)
set(KV_CONFORM_SRC ${CMAKE_CURRENT_SOURCE_DIR}/test_conformance.c ${CMAKE_CURRENT_SOURCE_DIR}/conform.c
    ${CMAKE_CURRENT_SOURCE_DIR}/conform_ckpt.c ${CMAKE_CURRENT_SOURCE_DIR}/emu.c
    ${CMAKE_CURRENT_SOURCE_DIR}/testutil.c ${KV_TEST_METHODS})
add_executable(test_conformance ${KV_CONFORM_SRC})
target_link_libraries(test_conformance PRIVATE kvcore)
target_include_directories(test_conformance PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
foreach(i 0 1 2 3 4 5)
  add_test(NAME conformance_${i}of6 COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 1 ${MPIEXEC_PREFLAGS}
           $<TARGET_FILE:test_conformance> ${i}/6)
  # the corruption sweeps take minutes under ASan+UBSan on 2 cores
  set(kv_conf_labels "unit;checkpoint;conformance;tier1")
  math(EXPR third "${i} % 3")
  if(NOT third EQUAL 2)
    # under ASan+UBSan the whole registry takes 30-40 minutes on 2 cores:
    # the sanitizer pass runs the third of it at positions 2 mod 3 (parts 2
    # and 5; docs/TESTING.md)
    list(APPEND kv_conf_labels nosanitize)
  endif()
  set_tests_properties(conformance_${i}of6 PROPERTIES ENVIRONMENT "${KV_MPI_ENV}" LABELS "${kv_conf_labels}"
                       TIMEOUT 1800 PROCESSORS 1)
endforeach()
