#!/usr/bin/python3
"""The progress line: rank 0 only, at most once a second, off with --quiet.

usage: check_progress.py KVSTREAM WORKDIR"""
import os
import re
import sys
import time

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
# The line needs a replay that lasts more than a second, whatever the
# methods' speed on this machine: start at 600 queries and quadruple them
# until a replay prints a line or lasts long enough that it must have.
for m in (600, 2400, 9600):
    trace = os.path.join(work, "progress%d.h5" % m)
    r = run(mpi_cmd(2, exe, "gen", "--streams", "2", "--tokens", "300000", "--dim", "32", "--queries", str(m),
                    "--seed", "3", "-o", trace))
    if r.returncode:
        fail(r.stderr)
    t0 = time.time()
    # topk makes one pass over its prefix per query position (exact answers a
    # whole batch in one pass)
    r = run(mpi_cmd(2, exe, "replay", trace, "--methods", "exact,window:W=1000,topk:k=8", "--batch", "8"))
    elapsed = time.time() - t0
    if r.returncode:
        fail(r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.startswith("replay:")]
    print("%d queries: %d progress lines in %.1fs" % (m, len(lines), elapsed))
    # mpirun's start and the summary take well under 2 s of the wall time
    if lines or elapsed > 4.0:
        break
if not lines:
    fail("no progress line in a %.1fs replay" % elapsed)
if len(lines) > elapsed + 1:
    fail("%d progress lines in %.1fs: more than one a second (or printed by every rank)" % (len(lines), elapsed))
pat = re.compile(r"^replay: tokens (\d+)/300000  queries (\d+)/%d  \S+ tok/s  elapsed \d+s  ETA \d+s$" % m)
last = (-1, -1)
for l in lines:
    m = pat.match(l)
    if not m:
        fail("progress line has an unexpected form: %r" % l)
    cur = (int(m.group(1)), int(m.group(2)))
    if cur < last:
        fail("progress went backwards: %r" % l)
    last = cur
r = run(mpi_cmd(2, exe, "replay", trace, "--methods", "window:W=1000", "--batch", "8", "--quiet"))
if r.returncode or any(l.startswith("replay:") for l in r.stderr.splitlines()):
    fail("--quiet still printed progress: %r" % r.stderr)
print("check_progress: 3 passed, 0 failed")
