# Transport independence: the same replays over shared memory
# (btl vader) and over TCP (btl tcp, the inter-node path) agree bitwise;
# kill -9 of one rank ends the job over either (tests/check_transport.py).
add_test(NAME transport_tcp COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_transport.py ${KVSTREAM_EXE}
         ${KV_WORK}/transport)
set_tests_properties(transport_tcp PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;transport" TIMEOUT 600)
