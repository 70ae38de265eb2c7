#!/usr/bin/env python3
"""turboquant through `kvstream replay`.

- outputs at 3 ranks equal those at 1 (rotation keyed by seed and stream,
  never the rank), and memory_bytes equal within 1% (rows cover each shard,
  the rotations are counted once per stream);
- --batch 1 gives the same outputs as the default batch (partial_batch
  answers each prefix as partial would), float window included;
- turboquant:budget=12% stays within its budget at 1 and 3 ranks;
- the seed matters (another --seed: other outputs), reruns are bitwise equal;
- more bits, less error (p50 at 4 bits < 2 bits);
- `kvstream methods` lists it under quantisation; bad specs are one line,
  exit 2.
usage: check_turboquant.py KVSTREAM WORKDIR"""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
trace = os.path.join(work, "tq.h5")
S, n, d = 2, 12000, 16
r = run(mpi_cmd(1, exe, "gen", "--kind", "clustered", "--clusters", "8", "--streams", str(S), "--tokens", str(n),
                "--dim", str(d), "--queries", "24", "--chunk", "400", "--seed", "7", "-o", trace))
if r.returncode:
    fail("gen failed: " + r.stderr)
METHODS = ["turboquant:bits=4", "turboquant:bits=2", "turboquant:bits=3,mode=prod,residual=50",
           "turboquant:budget=12%"]


def replay(P, name, *extra):
    out = os.path.join(work, name + ".h5")
    r = run(mpi_cmd(P, exe, "replay", trace, "--methods", ",".join(METHODS), "--shard-chunk", "400",
                    "--save-outputs", "-q", "-o", out, *extra), timeout=600)
    if r.returncode:
        fail("np=%d replay failed: %s" % (P, r.stderr))
    res = {}
    with h5py.File(out, "r") as f:
        for m in METHODS:
            g = f["methods"][m]
            res[m] = dict(g.attrs)
            res[m]["rel"] = g["rel_error"][...]
            res[m]["out"] = g["outputs"][...].astype(np.float64)
    return res


runs = {P: replay(P, "np%d" % P) for P in (1, 3)}
for m in METHODS:
    a, b = runs[1][m]["out"], runs[3][m]["out"]
    tol = 1e-5 * max(1.0, float(np.abs(a).max()))
    diff = float(np.abs(a - b).max())
    m1, m3 = runs[1][m]["memory_bytes"], runs[3][m]["memory_bytes"]
    print("%-42s np=1 vs np=3: max |diff| %.3g (tol %.3g); memory %d vs %d; p50 error %.4g" % (
        m, diff, tol, m1, m3, np.median(runs[1][m]["rel"])))
    if not diff <= tol:
        fail("%s: outputs differ between 1 and 3 ranks by %.3g" % (m, diff))
    if abs(m3 - m1) > 0.01 * m1:
        fail("%s: memory %d at 1 rank, %d at 3" % (m, m1, m3))
for P in (1, 3):
    cap = 0.12 * n * 2 * d * 4 * S
    if runs[P]["turboquant:budget=12%"]["memory_bytes"] > cap:
        fail("np=%d budget=12%%: memory %d over %d" % (P, runs[P]["turboquant:budget=12%"]["memory_bytes"], cap))
one = replay(3, "batch1", "--batch", "1")
for m in METHODS:
    a, b = runs[3][m]["out"], one[m]["out"]
    diff = float(np.abs(a - b).max())
    if not diff <= 1e-5 * max(1.0, float(np.abs(a).max())):
        fail("%s: --batch 1 differs from the default batch by %.3g" % (m, diff))
if np.median(runs[1]["turboquant:bits=4"]["rel"]) >= np.median(runs[1]["turboquant:bits=2"]["rel"]):
    fail("4 bits are not more accurate than 2")
again = replay(3, "again")
other = replay(3, "seed", "--seed", "999")
for m in METHODS:
    if not np.array_equal(again[m]["out"], runs[3][m]["out"]):
        fail("%s: two runs with the same seed differ" % m)
    if np.array_equal(other[m]["out"], runs[3][m]["out"]):
        fail("%s: --seed does not change the rotation" % m)

r = run([exe, "methods"])
q = r.stdout[r.stdout.index("\nquantisation"):] if "\nquantisation" in r.stdout else ""
if "\n  turboquant " not in q:
    fail("kvstream methods does not list turboquant under quantisation")
for spec, word in (("turboquant:bits=5", "bits"), ("turboquant:bits=3,budget=10%", "budget"),
                   ("turboquant:mode=fast", "mode"), ("turboquant:budget=1%", "budget")):
    r = run(mpi_cmd(1, exe, "replay", trace, "--methods", spec, "-q"))
    lines = [l for l in r.stderr.splitlines() if l.startswith("kvstream")]
    if r.returncode != 2 or len(lines) != 1 or word not in lines[0]:
        fail("%s: want exit 2 and one line naming %r, got %d: %r" % (spec, word, r.returncode, r.stderr))
print("PASS")
