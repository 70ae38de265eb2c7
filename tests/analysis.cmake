# The analysis scripts (analysis/*.py) on results the tests make themselves:
# numbers in their CSV/Markdown against the HDF5 files, PNGs are real plots.
# (This file is included before core.cmake, so it sets up its own work dir.)
set(KV_ANALYSIS_WORK ${CMAKE_CURRENT_BINARY_DIR}/work/analysis)
file(MAKE_DIRECTORY ${KV_ANALYSIS_WORK})
set(KV_ANALYSIS_ENV "PYTHONPATH=${CMAKE_CURRENT_SOURCE_DIR};KV_MPIEXEC=${MPIEXEC_EXECUTABLE};${KV_MPI_ENV}")
foreach(what error_memory scaling sweep heads)
  add_test(NAME analysis_${what}
           COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/test_analysis.py ${KVSTREAM_EXE} ${KV_ANALYSIS_WORK}/${what} ${what})
  set_tests_properties(analysis_${what} PROPERTIES ENVIRONMENT "${KV_ANALYSIS_ENV}" LABELS "analysis" TIMEOUT 900)
endforeach()
# bench-peers.py --ggml refuses, with one line and exit 2, a directory that is
# not a ggml checkout (the timing itself needs a user's ggml: not tested here)
add_test(NAME bench_peers_ggml_refuses
         COMMAND sh -c "\"$0\" \"$1\" --ggml \"$2\" 2>&1; echo rc=$?"
                 ${KV_PY} ${CMAKE_SOURCE_DIR}/scripts/bench-peers.py ${CMAKE_CURRENT_SOURCE_DIR})
set_tests_properties(bench_peers_ggml_refuses PROPERTIES LABELS "analysis;tier2" TIMEOUT 60 PROCESSORS 1
                     PASS_REGULAR_EXPRESSION "^bench-peers: [^\n]* is not a ggml source checkout [^\n]*\nrc=2\n$")
