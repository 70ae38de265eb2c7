# Replay vs the model's own attention outputs.
add_test(NAME model_replay COMMAND ${KV_PY} ${CMAKE_CURRENT_SOURCE_DIR}/check_model_replay.py ${KVSTREAM_EXE}
         ${KV_MODEL} ${KV_WORK}/model_replay)
set_tests_properties(model_replay PROPERTIES ENVIRONMENT "${KV_PYENV}" LABELS "mpi;record;numerics" TIMEOUT 900)
