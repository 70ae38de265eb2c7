# Backbone tests: merge operator, spec parser, exact replay vs a float64
# reference under 1..4 ranks, generator determinism, malformed input.

add_executable(test_merge test_merge.c testutil.c)
target_link_libraries(test_merge PRIVATE kvcore)
foreach(np 1 2 3 4)
  kv_mpi_test(merge_np${np} ${np} $<TARGET_FILE:test_merge>)
  set_property(TEST merge_np${np} APPEND PROPERTY LABELS numerics)
endforeach()
kv_unit_test(test_spec test_spec.c core)
kv_unit_test(test_size test_size.c core)

# one trace for the exact tests: 3 streams, dv != d, small file chunks so
# every rank owns several chunk-cyclic pieces
add_test(NAME core_gen_trace COMMAND ${KVSTREAM_EXE} gen --kind gaussian --streams 3 --tokens 5000 --dim 32
         --dv 16 --queries 40 --chunk 512 --seed 11 -o ${KV_WORK}/core.h5)
set_tests_properties(core_gen_trace PROPERTIES FIXTURES_SETUP core_trace ENVIRONMENT "${KV_MPI_ENV}" PROCESSORS 1)
set(KV_EXACT_RESULTS "")
foreach(np 1 2 3 4)
  kv_mpi_test(exact_replay_np${np} ${np} ${KVSTREAM_EXE} replay ${KV_WORK}/core.h5 --methods exact
              --save-outputs --quiet --batch 7 -o ${KV_WORK}/core_exact_np${np}.h5)
  set_tests_properties(exact_replay_np${np} PROPERTIES FIXTURES_REQUIRED core_trace FIXTURES_SETUP core_exact)
  list(APPEND KV_EXACT_RESULTS ${KV_WORK}/core_exact_np${np}.h5)
endforeach()
add_test(NAME exact_vs_reference COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_exact.py ${KV_WORK}/core.h5 ${KV_EXACT_RESULTS})
set_tests_properties(exact_vs_reference PROPERTIES FIXTURES_REQUIRED "core_trace;core_exact" ENVIRONMENT "${KV_PYENV}"
                     LABELS numerics PROCESSORS 1)

# every-position queries (many queries share the batch, some with p = 1)
add_test(NAME core_gen_every COMMAND ${KVSTREAM_EXE} gen --kind clustered --clusters 5 --streams 2 --tokens 300
         --dim 16 --every-position --chunk 64 --seed 4 -o ${KV_WORK}/every.h5)
set_tests_properties(core_gen_every PROPERTIES FIXTURES_SETUP every_trace ENVIRONMENT "${KV_MPI_ENV}" PROCESSORS 1)
set(KV_EVERY_RESULTS "")
foreach(np 1 3 4)
  kv_mpi_test(every_replay_np${np} ${np} ${KVSTREAM_EXE} replay ${KV_WORK}/every.h5 --methods exact --save-outputs
              --quiet --shard-chunk 16 -o ${KV_WORK}/every_np${np}.h5)
  set_tests_properties(every_replay_np${np} PROPERTIES FIXTURES_REQUIRED every_trace FIXTURES_SETUP every_exact)
  list(APPEND KV_EVERY_RESULTS ${KV_WORK}/every_np${np}.h5)
endforeach()
add_test(NAME every_vs_reference COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_exact.py ${KV_WORK}/every.h5 ${KV_EVERY_RESULTS})
set_tests_properties(every_vs_reference PROPERTIES FIXTURES_REQUIRED "every_trace;every_exact" ENVIRONMENT "${KV_PYENV}"
                     LABELS numerics PROCESSORS 1)

# the generator writes the same bytes whatever the rank count
add_test(NAME gen_rank_independent COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_gen.py ${KVSTREAM_EXE} ${KV_WORK})
set_tests_properties(gen_rank_independent PROPERTIES ENVIRONMENT "${KV_PYENV}" TIMEOUT 300 LABELS numerics)

# one rank: two halves of the checks, side by side under ctest -j2
foreach(part 0 1)
  add_test(NAME malformed_np1_part${part} COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/malformed.py ${KVSTREAM_EXE} 1
           ${KV_WORK}/malformed_np1_part${part} ${part}/2)
  set_tests_properties(malformed_np1_part${part} PROPERTIES ENVIRONMENT "${KV_PYENV}" TIMEOUT 900 PROCESSORS 1)
endforeach()
add_test(NAME malformed_np3 COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/malformed.py ${KVSTREAM_EXE} 3 ${KV_WORK}/malformed_np3)
set_tests_properties(malformed_np3 PROPERTIES ENVIRONMENT "${KV_PYENV}" TIMEOUT 900)
# the sanitizer pass checks the bad-input paths at one rank (malformed_np1_*)
set_property(TEST malformed_np3 APPEND PROPERTY LABELS nosanitize)

add_test(NAME progress_line COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_progress.py ${KVSTREAM_EXE} ${KV_WORK}/progress)
# nosanitize: a replay made to last seconds for the line's timing (90 s
# under ASan); its exact, window and topk paths run there in other replays
set_tests_properties(progress_line PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;nosanitize" TIMEOUT 600)
# |V_p|_op for the bound ratio (Lanczos) against Jacobi eigenvalues
kv_unit_test(test_metrics test_metrics.c core numerics)
