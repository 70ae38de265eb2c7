# cmake -DFILE=path -DSHA=hex -P sha256_check.cmake: fails unless FILE's sha256 is SHA.
file(SHA256 ${FILE} got)
if(NOT got STREQUAL SHA)
  message(FATAL_ERROR "${FILE}: sha256 ${got}, expected ${SHA}")
endif()
message(STATUS "${FILE}: sha256 ok")
