#!/usr/bin/python3
"""--semantics window-unmasked-values end to end (ALGORITHMS.md section 3).

usage: check_unmasked.py KVSTREAM WORKDIR NP
For n = 2^10, 2^12, 2^14: the exact reference equals an independent float64
computation of the variant formula (<= 2e-6), the O(dW) method
unmasked-window equals exact to rounding (rel_error <= 2e-6), and its memory
stays flat as n grows while exact's grows linearly."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, reference_outputs, rel, run

exe, work, nprocs = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(work, exist_ok=True)
W = 64
mem = {}
for lg in (10, 12, 14):
    n = 1 << lg
    trace = os.path.join(work, "unmasked-%d.h5" % n)
    res = os.path.join(work, "unmasked-%d-np%d.h5" % (n, nprocs))
    r = run(mpi_cmd(nprocs, exe, "gen", "--kind", "gaussian", "--streams", "2", "--tokens", str(n), "--dim", "16",
                    "--queries", "24", "--chunk", "256", "--seed", str(lg), "-o", trace))
    if r.returncode:
        fail(r.stderr)
    r = run(mpi_cmd(nprocs, exe, "replay", trace, "--semantics", "window-unmasked-values", "--window", str(W),
                    "--methods", "exact,unmasked-window", "--save-outputs", "--quiet", "-o", res))
    if r.returncode:
        fail(r.stderr)
    Z, _, _ = reference_outputs(trace, "window-unmasked-values", W)
    with h5py.File(res, "r") as f:
        if f.attrs["semantics"].decode() != "window-unmasked-values" or int(f.attrs["window"]) != W:
            fail("results do not record the semantics")
        ez = rel(f["methods/exact/outputs"][...].astype(float), Z).max()
        eu = f["methods/unmasked-window/rel_error"][...].max()
        mem[n] = (int(f["methods/unmasked-window"].attrs["memory_bytes"]), int(f["methods/exact"].attrs["memory_bytes"]))
    print("n=%6d np=%d: exact vs float64 %.2e, unmasked-window vs exact %.2e, memory %d vs exact %d"
          % (n, nprocs, ez, eu, mem[n][0], mem[n][1]))
    if ez > 2e-6:
        fail("exact under window-unmasked-values differs from the float64 reference by %.3g" % ez)
    if eu > 2e-6:
        fail("unmasked-window differs from exact by %.3g" % eu)
a, b = mem[1 << 10][0], mem[1 << 14][0]
if b > a * 1.05 + 64 * nprocs:
    fail("unmasked-window memory grew from %d to %d bytes over x16 tokens" % (a, b))
if mem[1 << 14][1] < 15 * mem[1 << 10][1]:
    fail("exact memory should grow linearly")
print("check_unmasked: 4 passed, 0 failed")
