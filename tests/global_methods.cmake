# Global method parameters (topk's global top-k, h2o's, tova's and snapkv's
# global budgets): the rank count must not change a method's answers (topk)
# or its budget (h2o, tova, snapkv, balancekv; "evict" also checks tokens >= n
# exact).
# Unit: P simulated ranks in one process (emu.c).  End to end: replays at -np 1..4
# compared by check_global_methods.py.
kv_unit_test(test_global_methods "${CMAKE_CURRENT_SOURCE_DIR}/test_global_methods.c;${CMAKE_CURRENT_SOURCE_DIR}/emu.c;${CMAKE_CURRENT_SOURCE_DIR}/evref.c" methods numerics)

add_test(NAME global_gen_trace COMMAND ${KVSTREAM_EXE} gen --kind clustered --clusters 8 --streams 2 --tokens 3000
         --dim 24 --dv 8 --queries 60 --chunk 256 --seed 5 -o ${KV_WORK}/global.h5)
set_tests_properties(global_gen_trace PROPERTIES FIXTURES_SETUP global_trace ENVIRONMENT "${KV_MPI_ENV}" PROCESSORS 1)
set(KV_GLOBAL_RESULTS "")
foreach(np 1 2 3 4)
  # shard chunk 37: every rank owns many pieces; --batch 7: multi-position batches
  kv_mpi_test(global_replay_np${np} ${np} ${KVSTREAM_EXE} replay ${KV_WORK}/global.h5
              --methods exact,topk:k=5,name=topk5,topk:k=40,name=topk40,topk:k=100000,name=topkall,h2o:tokens=300,recent=50,name=h2o_tok,h2o:budget=5%,name=h2o_pct,tova:budget=5%,name=tova_pct,tova:tokens=3000,name=tova_all,snapkv:budget=5%,window=8,name=snap_pct,snapkv:tokens=3000,name=snap_all,balancekv:budget=5%,name=bkv_pct,balancekv:tokens=3000,name=bkv_all
              --save-outputs --quiet --batch 7 --shard-chunk 37 -o ${KV_WORK}/global_np${np}.h5)
  set_tests_properties(global_replay_np${np} PROPERTIES FIXTURES_REQUIRED global_trace FIXTURES_SETUP global_replays)
  list(APPEND KV_GLOBAL_RESULTS ${KV_WORK}/global_np${np}.h5)
endforeach()
foreach(what topk h2o evict)
  add_test(NAME global_${what}_vs_ranks COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_global_methods.py ${what}
           ${KV_WORK}/global.h5 ${KV_GLOBAL_RESULTS})
  set_tests_properties(global_${what}_vs_ranks PROPERTIES FIXTURES_REQUIRED "global_trace;global_replays"
                       ENVIRONMENT "${KV_PYENV}" LABELS "mpi;numerics" PROCESSORS 1)
endforeach()

# --budget-scope layer|trace (ALGORITHMS.md 4g): 4 streams sharing one budget
# at 1..4 emulated ranks against the brute-force group rule (evref.c), and
# the refusals.  End to end: the option's refusals in one line.
kv_unit_test(test_budget_scope "${CMAKE_CURRENT_SOURCE_DIR}/test_budget_scope.c;${CMAKE_CURRENT_SOURCE_DIR}/evref.c" methods numerics)
add_test(NAME budget_scope_no_heads COMMAND ${KVSTREAM_EXE} replay ${KV_WORK}/global.h5 --methods h2o:tokens=100
         --budget-scope layer -q)
set_tests_properties(budget_scope_no_heads PROPERTIES FIXTURES_REQUIRED global_trace ENVIRONMENT "${KV_MPI_ENV}"
                     PASS_REGULAR_EXPRESSION "--budget-scope layer: the trace has no n_kv_heads" PROCESSORS 1)
add_test(NAME budget_scope_unscoped COMMAND ${KVSTREAM_EXE} replay ${KV_WORK}/global.h5 --methods h2o,uniform
         --budget 10% --budget-scope trace -q)
set_tests_properties(budget_scope_unscoped PROPERTIES FIXTURES_REQUIRED global_trace ENVIRONMENT "${KV_MPI_ENV}"
                     PASS_REGULAR_EXPRESSION "--budget-scope trace: method 'uniform:budget=10%' shares a budget per stream only" PROCESSORS 1)
add_test(NAME budget_scope_bad COMMAND ${KVSTREAM_EXE} replay ${KV_WORK}/global.h5 --budget-scope head -q)
set_tests_properties(budget_scope_bad PROPERTIES FIXTURES_REQUIRED global_trace ENVIRONMENT "${KV_MPI_ENV}"
                     PASS_REGULAR_EXPRESSION "--budget-scope: 'head' is not one of stream, layer, trace" PROCESSORS 1)
# the same trace under --budget-scope trace: P-invariant and within S budgets
set(KV_SCOPE_RESULTS "")
foreach(np 1 2)
  kv_mpi_test(global_scope_np${np} ${np} ${KVSTREAM_EXE} replay ${KV_WORK}/global.h5 --budget-scope trace
              --methods exact,h2o:budget=5%,name=h2o_pct,tova:budget=5%,name=tova_pct,snapkv:budget=5%,window=8,name=snap_pct
              --save-outputs --quiet --batch 7 --shard-chunk 37 -o ${KV_WORK}/global_scope_np${np}.h5)
  set_tests_properties(global_scope_np${np} PROPERTIES FIXTURES_REQUIRED global_trace FIXTURES_SETUP global_scope)
  list(APPEND KV_SCOPE_RESULTS ${KV_WORK}/global_scope_np${np}.h5)
endforeach()
add_test(NAME global_scope_vs_ranks COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_global_methods.py scope
         ${KV_WORK}/global.h5 ${KV_SCOPE_RESULTS})
set_tests_properties(global_scope_vs_ranks PROPERTIES FIXTURES_REQUIRED "global_trace;global_scope"
                     ENVIRONMENT "${KV_PYENV}" LABELS "mpi;numerics" PROCESSORS 1)
