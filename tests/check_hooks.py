#!/usr/bin/python3
"""The driver side of the feedback and select hooks (src/methods/method.h), end to end.

usage: check_hooks.py KVSTREAM WORKDIR
select (topk): each rank lists its k largest logits per query, the driver
merges the lists over all ranks and every rank folds its tokens at or above
the global k-th; so the selected set, and the answer up to rounding, do not
depend on the rank count.  Checks topk:k=8's outputs (--save-outputs,
float32) at P = 2, 3 against P = 1: each is a double sum of the same k terms
(ties aside) in another order, off by a few double eps, so its float32
rounding is the same or one ulp away: |z_P - z_1| <= 2^-23 |z_1| per
component.  A rank-local top-k (no merge) would attend to P k tokens and
miss this by orders.  (rel_error is not compared: the exact reference sums
in float tiles that follow the sharding.)
feedback (h2o): after every per-prefix partial call the driver merges (m, l)
over the ranks and feeds it back; the test replays h2o at P = 1..3 on a trace
with several queries per position (500 queries over 300 tokens) and with
every other hook's method beside it (exact's partial_batch, window's horizon,
topk's select), requires that it answers (rel_error < 1 on average), and that
two P = 3 runs are bitwise equal (the merge is in rank order).
Error safety: a NaN read by one rank mid-walk stops every rank together."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
eps = np.finfo(np.float64).eps


def gen(name, *args):
    path = os.path.join(work, name)
    r = run(mpi_cmd(1, exe, "gen", "--kind", "clustered", "--clusters", "8", "--streams", "2", "--dim", "16",
                    "--seed", "5", "-o", path, *args))
    if r.returncode:
        fail("gen %s failed: %s" % (name, r.stderr))
    return path


def replay(P, trace, methods, out, *args, what="rel_error"):
    out = os.path.join(work, out)
    r = run(mpi_cmd(P, exe, "replay", trace, "--methods", methods, "--quiet", "-o", out, *args))
    if r.returncode:
        fail("replay np=%d %s failed: %s" % (P, methods, r.stderr))
    with h5py.File(out, "r") as f:
        return {g: f["methods"][g][what][...] for g in f["methods"]}


checks = 0
n, k = 3000, 8
spread = gen("spread.h5", "--tokens", str(n), "--queries", "48", "--chunk", "250")
ref = None
for P in (1, 2, 3):
    res = replay(P, spread, "exact,topk:k=%d" % k, "topk-np%d.h5" % P, "--batch", "16", "--save-outputs",
                 what="outputs")
    z = res["topk:k=%d" % k].astype(np.float64)
    if ref is None:
        ref, zx = z, res["exact"].astype(np.float64)
        if not (np.abs(ref - zx).max() > 1e-3 * np.abs(zx).max()):
            fail("topk:k=%d is exact on this trace: the test cannot tell" % k)
        continue
    tol = 2.0 ** -23 * np.abs(ref)
    bad = np.abs(z - ref) > tol
    if bad.any():
        i = np.argmax(np.abs(z - ref) - tol)
        fail("np=%d topk: output %r vs %r at np=1 (flat %d), tolerance %.3g" % (P, z.flat[i], ref.flat[i], i, tol.flat[i]))
    print("np=%d topk:k=%d: outputs within one float32 ulp of np=1 (max diff %.3g)" % (P, k, np.abs(z - ref).max()))
    checks += 1

dup = gen("dup.h5", "--tokens", "300", "--queries", "500", "--chunk", "50")
methods = "exact,h2o:tokens=64,window:W=64,topk:k=4"
runs = {}
for P, tag in ((1, "a"), (2, "a"), (3, "a"), (3, "b")):
    rel = replay(P, dup, methods, "h2o-np%d%s.h5" % (P, tag), "--batch", "32")
    h = rel["h2o:tokens=64"]
    if not (np.isfinite(h).all() and h.mean() < 1):
        fail("np=%d h2o: rel_error mean %g (did not answer)" % (P, h.mean()))
    runs[(P, tag)] = rel
    checks += 1
for g in runs[(3, "a")]:
    if not np.array_equal(runs[(3, "a")][g].view(np.uint64), runs[(3, "b")][g].view(np.uint64)):
        fail("np=3 %s: two runs differ (feedback or select merge not deterministic)" % g)
print("h2o with feedback answers at np=1..3 (mean rel_error %s); two np=3 runs bitwise equal"
      % ", ".join("%.3g" % runs[(P, "a")]["h2o:tokens=64"].mean() for P in (1, 2, 3)))
checks += 1

# An error on one rank in the middle of the walk (a NaN in a value that rank
# 1 of 2, rank 2 of 3, reads at token 1300) must not leave the other ranks
# waiting in a feedback or select merge: all stop, exit 2, with that rank's
# message, agreed once.
bad = os.path.join(work, "nan.h5")
with h5py.File(spread, "r") as f, h5py.File(bad, "w") as g:
    for key in f:
        f.copy(key, g)
    for key, val in f.attrs.items():
        g.attrs[key] = val
    v = g["values"][1, 1300]
    v[3] = np.nan
    g["values"][1, 1300] = v
for P in (2, 3):
    r = run(mpi_cmd(P, exe, "replay", bad, "--methods", "exact,h2o:tokens=64,topk:k=4", "--batch", "48", "--quiet"),
            timeout=60)
    line = [x for x in r.stderr.splitlines() if x.startswith("kvstream: error:")]
    want = "/values[1, 1300, 3] is not finite (nan) (rank %d)" % (P - 1)
    if r.returncode != 2 or not line or not line[0].endswith(want):
        fail("np=%d NaN mid-walk: status %d, %r; expected 2 and a line ending %r" % (P, r.returncode, line, want))
    print("np=%d NaN on rank %d mid-walk: every rank stopped, status 2, %s" % (P, P - 1, line[0]))
    checks += 1
print("check_hooks: %d passed, 0 failed" % checks)
