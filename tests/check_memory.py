#!/usr/bin/python3
"""Memory is reported as the peak (issue 12, part 1).

usage: check_memory.py KVSTREAM WORKDIR
Replays a clustered trace with exact, window, uniform, h2o, topk and subgen
under 1..4 ranks and checks, for every method: memory_bytes (the sum over
ranks of each rank's largest state, sampled after every ingest block and
every partial call) equals peak_memory_bytes and is >= final_memory_bytes
(the end-of-stream figure); exact, which only grows, has peak == final; the
root attribute peak_rss_bytes (largest process peak RSS over the ranks) is
present and at least the largest per-rank state could be (> 0); and the
table's memory column shows the peak.  SubGen's exact buffer of s rows lives
only until its value samplers take over, so on this trace its peak must
exceed its final state: the transient the old end-of-stream figure hid."""
import os
import sys

import h5py

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
trace = os.path.join(work, "mem.h5")
r = run(mpi_cmd(1, exe, "gen", "--kind", "clustered", "--clusters", "8", "--streams", "2", "--tokens", "6000",
                "--dim", "16", "--queries", "24", "--chunk", "500", "--seed", "3", "-o", trace))
if r.returncode:
    fail("gen failed: " + r.stderr)
methods = "exact,window:W=256,uniform:budget=256,h2o:budget=256,topk:k=16,subgen:delta=1,t=8,s=512"
checks = 0
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
            if mem != peak:
                fail("np=%d %s: memory_bytes %d is not the peak %d" % (P, label, mem, peak))
            if mem < final:
                fail("np=%d %s: peak %d below the final state %d" % (P, label, mem, final))
            if label == "exact" and mem != final:
                fail("np=%d exact: peak %d != final %d (exact only grows)" % (P, mem, final))
            if label.startswith("subgen") and not mem > final:
                fail("np=%d %s: peak %d does not exceed the final %d (exact buffer not seen)" % (P, label, mem, final))
            print("np=%d %-36s peak %9d  final %9d" % (P, label, mem, final))
            checks += 1
        print("np=%d peak RSS (largest rank) %d bytes" % (P, rss))
print("check_memory: %d passed, 0 failed" % checks)
