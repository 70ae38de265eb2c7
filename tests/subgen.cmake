# SubGen method and its samplers (src/methods/subgen.c, src/methods/sampler.c).
kv_unit_test(test_subgen test_subgen.c subgen numerics)
