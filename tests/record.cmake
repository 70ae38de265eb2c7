# Tests of `kvstream record` (src/model/llama.c, src/cmd/cmd_record.c) and of the npz
# converter (analysis/npz_to_kvtrace.py).  All carry the label "record":
#   ctest -L record --output-on-failure
# The model file's checksum, again at test time (a copy edited after configuring).
add_test(NAME model_sha256 COMMAND ${CMAKE_COMMAND} -DFILE=${KV_MODEL} -DSHA=${KV_MODEL_SHA256}
         -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/sha256_check.cmake)
set_tests_properties(model_sha256 PROPERTIES LABELS "record" TIMEOUT 60)
set(KV_REC_DIR ${CMAKE_CURRENT_BINARY_DIR}/record_tmp)
file(MAKE_DIRECTORY ${KV_REC_DIR})

# Loader, forward pass (README check value), bad checkpoints, kv_cmd_record.
# Not kv_unit_test: this one takes the model and a scratch directory as arguments.
add_executable(test_llama test_llama.c ${CMAKE_CURRENT_SOURCE_DIR}/testutil.c)
target_link_libraries(test_llama PRIVATE kvcore)
target_include_directories(test_llama PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
add_test(NAME test_llama COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 1 ${MPIEXEC_PREFLAGS}
         $<TARGET_FILE:test_llama> ${KV_MODEL} ${KV_REC_DIR})
set_tests_properties(test_llama PROPERTIES ENVIRONMENT "${KV_MPI_ENV}" LABELS "unit;record;numerics" TIMEOUT 300)

# The command line end to end: record past the model's seq_len (512) with a
# prompt and a small chunk (several write blocks), then check the file with
# h5py (layout, attributes, query_pos, GQA rows vs /model_outputs) and
# round-trip it through the npz converter.
set(KV_REC_TRACE ${KV_REC_DIR}/record_cli.h5)
add_test(NAME record_cli COMMAND ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 1 ${MPIEXEC_PREFLAGS}
         ${KVSTREAM_EXE} record --model ${KV_MODEL} --tokens 700 --prompt-tokens 5,6,7 --chunk 256 -o ${KV_REC_TRACE})
set_tests_properties(record_cli PROPERTIES ENVIRONMENT "${KV_MPI_ENV}" LABELS "record" TIMEOUT 300
                     FIXTURES_SETUP record_trace PASS_REGULAR_EXPRESSION "recorded 700 positions, 20 streams")
add_test(NAME record_layout COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/test_npz_to_kvtrace.py
         --record-trace ${KV_REC_TRACE} --tmp ${KV_REC_DIR})
set_tests_properties(record_layout PROPERTIES LABELS "record" TIMEOUT 300 FIXTURES_REQUIRED record_trace)

# A bad option exits with status 2 and one line naming the problem.
add_test(NAME record_cli_bad_option COMMAND sh -c
         "out=$(\"$0\" \"$@\" 2>&1); rc=$?; echo \"$out\"; [ $rc -eq 2 ] && echo \"$out\" | grep -q 'prompt-tokens.*comma-separated'"
         ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 1 ${MPIEXEC_PREFLAGS}
         ${KVSTREAM_EXE} record --model ${KV_MODEL} --tokens 5 --prompt-tokens 1,x -o ${KV_REC_DIR}/bad_option.h5)
set_tests_properties(record_cli_bad_option PROPERTIES ENVIRONMENT "${KV_MPI_ENV}" LABELS "record" TIMEOUT 120)

# The converter on synthetic arrays (contents, GQA mapping, query_pos, errors).
# `kvstream info` must accept what the converter writes.
add_test(NAME npz_to_kvtrace COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/test_npz_to_kvtrace.py --tmp ${KV_REC_DIR}/npz
         --kvstream-cmd ${MPIEXEC_EXECUTABLE} ${MPIEXEC_NUMPROC_FLAG} 1 ${MPIEXEC_PREFLAGS} ${KVSTREAM_EXE})
set_tests_properties(npz_to_kvtrace PROPERTIES ENVIRONMENT "${KV_MPI_ENV}" LABELS "record" TIMEOUT 300)
