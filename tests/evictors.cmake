# An independent float64 reference of window, sinks, topk, h2o, tova,
# snapkv and expected-attention (tests/check_evictors.py, written from the methods' definitions, not
# from kvstream's code) against kvstream at P = 1 and 3 on two generated
# traces and a recorded stories260K trace; outputs compared up to each
# stream's first near-tie decision, P = 3 against P = 1 too.
add_test(NAME evictors_reference COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_evictors.py
         --exe ${KVSTREAM_EXE} --work ${KV_WORK}/evictors)
# nosanitize: a numerics check (the native and portable passes run it) whose
# P = 3 replays oversubscribe ASan's ranks (2 minutes there); the evictors
# run under ASan in global_replay_np1/np2, global_scope_np1/np2 and
# test_budget_scope
set_tests_properties(evictors_reference PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;numerics;nosanitize" TIMEOUT 600)

# The decision selections (kernels/evict.c: kv_evict_lowest_cols, kv_evict_lowest) against a full sort,
# with ties, skipped rows, padding and +inf keys.
kv_unit_test(test_evict ${CMAKE_CURRENT_SOURCE_DIR}/test_evict.c numerics)
