#!/usr/bin/python3
"""Memory is reported as the time-aligned peak (docs/RESULTS_FORMAT.md).

usage: check_memory.py KVSTREAM WORKDIR
Replays a clustered trace with exact, window, uniform, h2o, topk and subgen
under 1..4 ranks.  memory_bytes is the largest, over memory epochs (one per
distinct query position, and the tail after the last query), of the state
summed over ranks; peak_rank_bytes is the largest single rank's own peak.
Checks, for every method: memory_bytes equals peak_memory_bytes and is >=
final_memory_bytes (the end-of-stream figure); peak_rank_bytes <= memory_bytes
<= P * peak_rank_bytes (each epoch's sum is at most P rank peaks), with
equality at P = 1 (one rank: both are its peak over time); exact, which only
grows, has peak == final, and its rows are the same bytes whatever P (only
its small run table, 16 bytes per entry, depends on the sharding); the root attribute peak_rss_bytes is present (> 0); and the
table's memory column shows the peak.  SubGen's exact buffer of s rows lives
only until its value samplers take over, so on one rank its peak must exceed
its final state: the transient the old end-of-stream figure hid.  (On more
ranks each rank's transient comes at another time, when it has seen s of
its own tokens, so the time-aligned sum need not show it.)

Time alignment: window:W=256 over chunks of 500 tokens.  At every prefix the
ranks together hold the last W tokens of each stream (the horizon hook), so
an epoch's sum over ranks is at most 2W (the window at the epoch's start and
at its end, if on different ranks), while each rank's own peak is W (some
rank owns all of the window at some prefix).  The old figure, the sum of the
ranks' peaks, would be P W; the test asks memory_bytes < 3 peak_rank_bytes at
P = 4, which only the time-aligned figure meets."""
import os
import sys

import h5py

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
trace = os.path.join(work, "mem.h5")
S, n, d = 2, 6000, 16
r = run(mpi_cmd(1, exe, "gen", "--kind", "clustered", "--clusters", "8", "--streams", str(S), "--tokens", str(n),
                "--dim", str(d), "--queries", "24", "--chunk", "500", "--seed", "3", "-o", trace))
if r.returncode:
    fail("gen failed: " + r.stderr)
methods = "exact,window:W=256,uniform:tokens=256,h2o:tokens=256,topk:k=16,subgen:delta=1,t=8,s=512"
checks = 0
exact_tokens = S * n * (d + d) * 4
for P in (1, 2, 3, 4):
    out = os.path.join(work, "mem-np%d.h5" % P)
    r = run(mpi_cmd(P, exe, "replay", trace, "--methods", methods, "--quiet", "-o", out))
    if r.returncode:
        fail("replay np=%d failed: %s" % (P, r.stderr))
    if "process peak RSS" not in r.stdout:
        fail("np=%d: the table does not report the process peak RSS" % P)
    with h5py.File(out, "r") as f:
        rss = int(f.attrs["peak_rss_bytes"])
        if rss <= 0:
            fail("np=%d: peak_rss_bytes %d" % (P, rss))
        for label in f["methods"]:
            a = f["methods"][label].attrs
            mem, peak, final = int(a["memory_bytes"]), int(a["peak_memory_bytes"]), int(a["final_memory_bytes"])
            prank = int(a["peak_rank_bytes"])
            if mem != peak:
                fail("np=%d %s: memory_bytes %d is not the peak %d" % (P, label, mem, peak))
            if mem < final:
                fail("np=%d %s: peak %d below the final state %d" % (P, label, mem, final))
            if not prank <= mem <= P * prank:
                fail("np=%d %s: memory_bytes %d outside [peak_rank_bytes %d, P x it]" % (P, label, mem, prank))
            if P == 1 and mem != prank:
                fail("np=1 %s: memory_bytes %d != peak_rank_bytes %d on one rank" % (label, mem, prank))
            if label == "exact":
                if mem != final:
                    fail("np=%d exact: peak %d != final %d (exact only grows)" % (P, mem, final))
                # the rows are the same whatever P; the run table (16 bytes an
                # entry, counted by capacity) is at most 24 runs per stream,
                # far below 1% of the rows even with generous capacity
                extra = mem - exact_tokens
                if not (0 <= extra < exact_tokens // 100 and extra % 16 == 0):
                    fail("np=%d exact: memory_bytes %d, expected %d bytes of rows + a small run table"
                         % (P, mem, exact_tokens))
            if label.startswith("subgen") and P == 1 and not mem > final:
                fail("np=1 %s: peak %d does not exceed the final %d (exact buffer not seen)" % (label, mem, final))
            if label.startswith("window") and P == 4 and not mem < 3 * prank:
                fail("np=4 %s: memory_bytes %d >= 3 x peak_rank_bytes %d: not time-aligned (sum of rank peaks?)"
                     % (label, mem, prank))
            print("np=%d %-36s peak %9d  final %9d  largest rank %9d" % (P, label, mem, final, prank))
            checks += 1
        print("np=%d peak RSS (largest rank) %d bytes" % (P, rss))
print("check_memory: %d passed, 0 failed" % checks)
