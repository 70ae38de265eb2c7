#!/usr/bin/python3
"""SubGen's budget= end to end: `kvstream replay --methods subgen:budget=X`.

usage: check_subgen_budget.py KVSTREAM WORKDIR
A clustered trace (2 streams) is replayed at -np 1 and 2 with SubGen at
budget=5% (and a spread-key trace whose small delta hits the cluster cap),
and window+subgen at budget=10%; the same with joint=1 (the budget all to
clusters whose samples carry values).  For each: memory_bytes (the peak over query
positions of the state summed over ranks and streams) <= S * budget * 1.03,
the mean error finite (< 1 on the clustered trace) and the replay's table
printed."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
n, d, S = 16384, 32, 2
exact_stream = n * (d + d) * 4  # bytes of one exact stream: the unit of %


def gen(name, *args):
    path = os.path.join(work, name)
    r = run(mpi_cmd(1, exe, "gen", "--tokens", str(n), "--dim", str(d), "--streams", str(S), "--queries", "64",
                    "--seed", "4", "-o", path, *args))
    if r.returncode:
        fail(r.stderr)
    return path


traces = {"clustered": gen("clustered.h5", "--kind", "clustered"),
          "spread": gen("spread.h5", "--kind", "clustered", "--clusters", "4096", "--spread", "0.5")}
cases = [("clustered", "subgen:budget=5%,name=sg", 0.05),
         ("spread", "subgen:delta=0.2,budget=5%,name=sg", 0.05),
         ("clustered", "window+subgen:budget=10%,name=sg", 0.10),
         ("clustered", "subgen:budget=5%,joint=1,name=sg", 0.05),
         ("spread", "subgen:delta=0.2,budget=5%,joint=1,name=sg", 0.05),
         ("clustered", "window+subgen:budget=10%,joint=1,name=sg", 0.10)]
checks = 0
for P in (1, 2):
    for i, (tr, spec, frac) in enumerate(cases):
        out = os.path.join(work, "case%d-%s-np%d.h5" % (i, tr, P))
        r = run(mpi_cmd(P, exe, "replay", traces[tr], "--methods", spec, "--no-bound-ratio", "-o", out), timeout=600)
        if r.returncode:
            fail("replay %s failed: %s" % (spec, r.stderr))
        if "sg" not in r.stdout:
            fail("the replay table was not printed:\n" + r.stdout)
        print(r.stdout.rstrip())
        with h5py.File(out, "r") as f:
            g = f["methods/sg"]
            mem = int(g.attrs["memory_bytes"])
            err = float(np.mean(g["rel_error"][...]))
            clusters = int(g.attrs["clusters"])
        limit = S * frac * exact_stream
        print("np=%d %s on %s: memory_bytes %d <= %d (%.1f%% of the budget), mean rel error %.4f, clusters %d"
              % (P, spec, tr, mem, limit, 100.0 * mem / limit, err, clusters))
        if not mem <= 1.03 * limit:
            fail("np=%d %s: memory_bytes %d over the budget %d" % (P, spec, mem, limit))
        # the spread trace's z* are small (values average out over 4096
        # clusters): its relative errors are large for every method, so only
        # finiteness is asked of it
        if not np.isfinite(err) or (tr == "clustered" and err >= 1.0):
            fail("np=%d %s: mean relative error %g" % (P, spec, err))
        checks += 2
print("check_subgen_budget: %d passed, 0 failed" % checks)
