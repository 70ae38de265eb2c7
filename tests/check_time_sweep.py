#!/usr/bin/python3
"""sweep --axis reads on the needle instance, small: n = 1024 and 4096,
d = 32, 64 probes, eps = 0.1, 2 ranks.

usage: check_time_sweep.py KVSTREAM WORKDIR
- window (a non-adaptive reader) meets eps only reading >= 0.9 n tokens per
  query (95% of the needles must be inside it; the search resolves 1/8);
- quest meets eps with pages = 2 (the newest page and the needle's) and
  reads n / 16 page bounds (d = dv: one token's worth each) plus 32 tokens:
  n / 16 + 32 exactly; its memory at that answer is >= n d 4 bytes;
- /sweep/read_tokens is written and the root attribute axis is "reads".
Exits 77 (skipped) when this build's replay does not count reads."""
import os
import sys

import h5py

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
out = os.path.join(work, "time.h5")
r = run(mpi_cmd(2, exe, "sweep", "--kind", "needle", "--n", "1024,4096", "--d", "32", "--eps", "0.1", "--queries", "64",
                "--axis", "reads", "--methods", "window:W=@,quest:pages=@", "--workdir", work, "-o", out), timeout=600)
if r.returncode and "does not count" in r.stderr:
    print("SKIP: " + r.stderr.strip())
    sys.exit(77)
if r.returncode:
    fail("sweep --axis reads failed: " + r.stderr)
print(r.stdout)
with h5py.File(out, "r") as f:
    g = f["sweep"]
    if f.attrs["axis"] not in (b"reads", "reads"):
        fail("axis attribute %r" % f.attrs["axis"])
    rows = list(zip([m.decode() if isinstance(m, bytes) else m for m in g["method"][...]], g["n"][...], g["param"][...],
                    g["met"][...], g["read_tokens"][...], g["budget_bytes"][...]))
for m, n, param, met, rd, mem in rows:
    if not met:
        fail("%s at n = %d did not meet eps" % (m, n))
    if m.startswith("window") and not rd >= 0.9 * n:
        fail("window at n = %d met eps reading %.1f < 0.9 n tokens per query" % (n, rd))
    if m.startswith("quest"):
        if param != 2 or abs(rd - (n / 16 + 32)) > 1e-6 * n:
            fail("quest at n = %d: pages %d reading %.2f, want pages 2 reading n/16 + 32 = %g" % (n, param, rd, n / 16 + 32))
        if mem < n * 32 * 4:
            fail("quest at n = %d holds %d bytes < n d 4" % (n, mem))
print("PASS")
