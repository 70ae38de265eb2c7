#!/usr/bin/python3
"""SubGen through `kvstream replay` under MPI.

usage: check_subgen_replay.py KVSTREAM WORKDIR NP
- clustered traces with 16 clusters, n = 2^12, 2^14, 2^16: the clusters
  found (summed over ranks) equal 16 per rank and, like the memory, do not
  grow with n (up to the rounding of the per-rank shares of s and t);
- error falls as t and s grow;
- theorem-style parameters keep bound_ratio <= eps on >= 95% of queries;
- identical runs are bitwise identical; another seed differs."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work, P = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(work, exist_ok=True)
checks = 0


def gen(n, name, clusters=16, spread=0.05):
    path = os.path.join(work, name)
    r = run(mpi_cmd(P, exe, "gen", "--kind", "clustered", "--clusters", str(clusters), "--spread", str(spread),
                    "--tokens", str(n), "--dim", "16", "--queries", "40", "--chunk", "1024", "--seed", "21", "-o", path))
    if r.returncode:
        fail(r.stderr)
    return path


def replay(trace, methods, out, *extra):
    r = run(mpi_cmd(P, exe, "replay", trace, "--methods", methods, "--quiet", "-o", out, *extra), timeout=600)
    if r.returncode:
        fail("replay failed: " + r.stderr)
    return h5py.File(out, "r")


# 1. clusters and memory level off
seen = []
for lg in (12, 14, 16):
    t = gen(1 << lg, "cl-%d.h5" % lg)
    with replay(t, "subgen:delta=1.0,t=16,s=64,name=sg", os.path.join(work, "cl-%d-np%d.h5" % (lg, P)),
                "--no-bound-ratio") as f:
        g = f["methods/sg"]
        seen.append((int(g.attrs["clusters"]), int(g.attrs["memory_bytes"]), int(f["methods/exact"].attrs["memory_bytes"])))
    print("n=2^%d np=%d: clusters %d, memory %d (exact %d)" % ((lg,) + (P,) + seen[-1]))
for c, m, e in seen:
    if c != 16 * P:
        fail("expected %d clusters (16 per rank), found %d" % (16 * P, c))
# s and t are totals split by shard share, rounded up per rank: how the
# chunks fall on the ranks (it changes with n) moves each rank's t and s by up
# to one: 16 clusters x one reservoir key (16 dims) plus one sample (its key,
# value, buffer row and bookkeeping) per rank
slack = P * (16 * 16 * 4 + 2 * 32 * 4 + 32)
if max(m for _, m, _ in seen) > 1.02 * min(m for _, m, _ in seen) + slack:
    fail("SubGen memory grows with n: %s" % [m for _, m, _ in seen])
if not seen[-1][2] > 10 * seen[-1][1]:
    fail("SubGen should hold far less than exact at n = 2^16")
checks += 2

# 2. error falls as t and s grow (a looser mixture so sampling matters)
t = gen(1 << 13, "mix.h5", clusters=8, spread=0.6)
specs = ["subgen:delta=3,t=%d,s=%d,name=ts%d" % (x, 4 * x, x) for x in (2, 8, 32, 128)]
with replay(t, ",".join(specs), os.path.join(work, "ts-np%d.h5" % P), "--no-bound-ratio") as f:
    errs = [float(np.mean(f["methods/ts%d/rel_error" % x][...])) for x in (2, 8, 32, 128)]
print("np=%d mean rel error for t = 2, 8, 32, 128: %s" % (P, " ".join("%.4f" % e for e in errs)))
if not all(a > b for a, b in zip(errs, errs[1:])):
    fail("error does not fall as t and s grow: %s" % errs)
checks += 1

# 3. theorem-style parameters: bound_ratio <= eps on >= 95% of queries
eps = 0.25
with replay(t, "subgen:delta=3,t=256,s=1024,name=big", os.path.join(work, "bound-np%d.h5" % P)) as f:
    br = f["methods/big/bound_ratio"][...]
    if np.any(f["methods/exact/bound_ratio"][...] != 0):
        fail("exact bound_ratio must be 0")
frac = float(np.mean(br <= eps))
print("np=%d bound_ratio <= %.2f on %.1f%% of queries (max %.3f)" % (P, eps, 100 * frac, br.max()))
if frac < 0.95:
    fail("bound_ratio <= eps on only %.1f%% of queries" % (100 * frac))
checks += 1

# 4. determinism
outs = []
for i, seed in enumerate((5, 5, 6)):
    with replay(t, "subgen:delta=3,t=8,s=32,name=sg", os.path.join(work, "det%d-np%d.h5" % (i, P)), "--seed",
                str(seed), "--save-outputs", "--no-bound-ratio") as f:
        outs.append(f["methods/sg/outputs"][...])
if not np.array_equal(outs[0], outs[1]):
    fail("identical runs differ")
if np.array_equal(outs[0], outs[2]):
    fail("seeds 5 and 6 gave identical outputs")
checks += 2
print("check_subgen_replay: %d passed, 0 failed" % checks)
