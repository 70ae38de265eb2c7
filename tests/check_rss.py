#!/usr/bin/python3
"""The replay's resident memory stays near what it accounts for (V^T V snapshots bounded).

usage: check_rss.py KVSTREAM WORKDIR
A trace where staging V^T V for a whole batch, as the replay once did, would
be large: S = 16 streams, dv = 128, 512 queries at distinct positions, one
batch of 512: 512 x 16 x 128^2 doubles = 1 GiB per rank, and as much again
on rank 0.  Now at most 64 MiB of snapshots are staged before they are summed
onto rank 0 (src/replay/sizes.c).  Checks, on 2 ranks:
  - peak_rss_bytes (largest rank) <= 1.25 x accounted + 256 MiB, where
    accounted = replay_buffer_bytes (the largest rank's replay buffers) + the
    methods' peak_rank_bytes (each the largest rank's own peak): 25% for
    allocator and page slack, 256 MiB for MPI, HDF5, OpenMP and the program;
    the old staging alone is 1 GiB, over that bound.
  - bound_ratio is bitwise the same with --batch 512 (snapshots flushed to
    rank 0 mid-walk, 32 at a time) and --batch 32 (one flush per batch): the
    Lanczos runs see the same V^T V in the same order, warm starts included.
  - a NaN that rank 1 reads between two flushes stops both ranks (status 2)."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
S, n, d, dv, m = 16, 4096, 16, 128, 512
trace = os.path.join(work, "rss.h5")
# values near 4 cluster values: V^T V has a clear top eigenvalue, so the
# 8192 Lanczos runs converge in a few steps (Gaussian values take ~10x longer)
r = run(mpi_cmd(2, exe, "gen", "--kind", "clustered", "--clusters", "4", "--value-noise", "0.1", "--streams", str(S),
                "--tokens", str(n), "--dim", str(d), "--dv", str(dv), "--queries", str(m), "--chunk", "1024",
                "--seed", "7", "-o", trace))
if r.returncode:
    fail("gen failed: " + r.stderr)
with h5py.File(trace, "r") as t:
    if len(np.unique(t["query_pos"][...])) != m:
        fail("the trace's %d queries are not at distinct positions" % m)

res = {}
for B in (512, 32):
    out = os.path.join(work, "rss-b%d.h5" % B)
    r = run(mpi_cmd(2, exe, "replay", trace, "--methods", "exact,window:W=512", "--batch", str(B), "--quiet",
                    "-o", out))
    if r.returncode:
        fail("replay --batch %d failed: %s" % (B, r.stderr))
    with h5py.File(out, "r") as f:
        rss, buf = int(f.attrs["peak_rss_bytes"]), int(f.attrs["replay_buffer_bytes"])
        meth = sum(int(f["methods"][g].attrs["peak_rank_bytes"]) for g in f["methods"])
        res[B] = {g: f["methods"][g]["bound_ratio"][...] for g in f["methods"]}
    limit = 1.25 * (buf + meth) + (256 << 20)
    old = B * S * dv * dv * 8
    print("--batch %4d: peak RSS %7.1f MiB, accounted %7.1f MiB (replay %6.1f + methods %6.1f), limit %7.1f MiB, "
          "old staging %7.1f MiB" % (B, rss / 2**20, (buf + meth) / 2**20, buf / 2**20, meth / 2**20, limit / 2**20,
                                     old / 2**20))
    if rss > limit:
        fail("--batch %d: peak RSS %d bytes exceeds 1.25 x accounted %d + 256 MiB" % (B, rss, buf + meth))
    if B == 512 and old < limit:
        fail("the trace is too small to tell: the old staging (%d bytes) fits under the limit" % old)
for g in res[512]:
    a, b = res[512][g], res[32][g]
    if not np.array_equal(a.view(np.uint64), b.view(np.uint64)):
        k = np.argmax(a != b)
        fail("%s: bound_ratio differs between --batch 512 and 32 (first at flat %d: %r vs %r)"
             % (g, k, a.flat[k], b.flat[k]))

# The flushes are collectives inside the walk: rank 1 failing at token 3500
# (a NaN it reads, after 13 flushes) must stop both ranks at the next one.
bad = os.path.join(work, "nan.h5")
with h5py.File(trace, "r") as f, h5py.File(bad, "w") as g:
    for key in f:
        f.copy(key, g)
    for key, val in f.attrs.items():
        g.attrs[key] = val
    v = g["values"][3, 3500]
    v[0] = np.nan
    g["values"][3, 3500] = v
r = run(mpi_cmd(2, exe, "replay", bad, "--methods", "exact", "--batch", "512", "--quiet"), timeout=60)
want = "/values[3, 3500, 0] is not finite (nan) (rank 1)"
line = [x for x in r.stderr.splitlines() if x.startswith("kvstream: error:")]
if r.returncode != 2 or not line or not line[0].endswith(want):
    fail("NaN mid-walk: status %d, %r; expected 2 and a line ending %r" % (r.returncode, line, want))
print("NaN on rank 1 between flushes: both ranks stopped, status 2")
print("check_rss: 2 batch sizes passed, bound ratios bitwise equal, mid-walk error agreed")
