# SubGen method and its samplers (src/method_subgen.c, src/sampler.c).
kv_unit_test(test_subgen test_subgen.c subgen)
