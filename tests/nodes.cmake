# Two emulated nodes on one machine: a 4-rank replay split 2+2
# over two "nodes", 127.0.0.2 and 127.0.0.3 (tests/fake_rsh.sh starts their orteds
# locally) uses vader inside a node and TCP between them, and is bitwise the
# 4-rank shared-memory run; kill -9 of a rank ends it (tests/check_nodes.py).
add_test(NAME transport_nodes COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_nodes.py ${KVSTREAM_EXE}
         ${KV_WORK}/nodes)
set_tests_properties(transport_nodes PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;transport" TIMEOUT 600)

# The same check on two Slurm nodes: a multiple-slurmd cluster on this
# machine started by the test (tests/slurm_nodes.sh); FAILS, does not skip,
# without slurm-wlm and munge. Serial, like the other Slurm test.
add_test(NAME transport_nodes_slurm
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/slurm_nodes.sh ${KVSTREAM_EXE} ${CMAKE_SOURCE_DIR}
                 ${KV_WORK}/nodes-slurm)
set_tests_properties(transport_nodes_slurm PROPERTIES LABELS "mpi;transport;slurm" TIMEOUT 600
                     ENVIRONMENT "${KV_PYENV}" RUN_SERIAL TRUE)
