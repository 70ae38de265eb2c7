#!/usr/bin/python3
"""Replay of a recorded trace reproduces the model's own attention outputs.

usage: check_model_replay.py KVSTREAM MODEL WORKDIR
Records 600 positions of stories260K (past its trained context of 512), then
replays --methods exact with 1..4 ranks: every query's exact output must
match /model_outputs to 1e-5 relative (checked both with the attribute the
replay writes and directly from the saved outputs)."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, rel, run

exe, model, work = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(work, exist_ok=True)
trace = os.path.join(work, "recorded.h5")
r = run(mpi_cmd(1, exe, "record", "--model", model, "--tokens", "600", "-o", trace))
if r.returncode:
    fail("record failed: " + r.stderr)
with h5py.File(trace, "r") as t:
    Z = t["model_outputs"][...].astype(np.float64)
checks = 0
for P in (1, 2, 3, 4):
    out = os.path.join(work, "recorded-np%d.h5" % P)
    r = run(mpi_cmd(P, exe, "replay", trace, "--methods", "exact", "--save-outputs", "--quiet", "-o", out))
    if r.returncode:
        fail("replay failed: " + r.stderr)
    if "model's own attention outputs" not in r.stdout:
        fail("replay did not report the comparison with /model_outputs")
    with h5py.File(out, "r") as f:
        attr = float(f.attrs["model_outputs_max_rel_error"])
        e = rel(f["methods/exact/outputs"][...].astype(np.float64), Z)
    print("np=%d: max rel error vs the model %.3g (attribute %.3g) over %d queries" % (P, e.max(), attr, e.size))
    if attr > 1e-5 or e.max() > 1e-5:
        fail("replay differs from the model's outputs by %.3g" % max(attr, e.max()))
    checks += 1
print("check_model_replay: %d passed, 0 failed" % checks)
