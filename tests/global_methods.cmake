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
