# Architecture rules (CMakeLists.txt, kv_layer): includes follow the declared
# layer dependencies; MPI calls only in mpi/; no abort()/exit() in libraries.
add_test(NAME layers COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_layers.py ${CMAKE_SOURCE_DIR} ${KV_LAYERS})
set_tests_properties(layers PROPERTIES LABELS "unit;layout" TIMEOUT 60)
