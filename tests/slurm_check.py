#!/usr/bin/python3
"""Checks on the results files of the jobs run by tests/slurm_jobs.sh.

usage (run with /usr/bin/python3; numpy, h5py):
  slurm_check.py replay FILE RANKS THREADS SPEC...   exact + each SPEC present, exact's
        rel_error all 0, every other method's rel_error finite and not all 0,
        memory_bytes < exact's, ranks/threads attributes as given
  slurm_check.py same A B                            methods, rel_error, outputs and memory
        figures of A and B bitwise equal (a resumed run against an uninterrupted one)
  slurm_check.py sweep DIR SPEC...                   DIR/task-NNN.h5 holds exact + SPEC[NNN]
  slurm_check.py scaling DIR TOKENS|- R:T...          one file rR_tT.h5 per point with those
        ranks/threads; TOKENS per core (weak: tokens = TOKENS*R*T) or - (strong: all
        equal); DIR/scaling.csv has exactly these points
Prints one "ok:" line per check, exits 1 on the first failure.
"""
import csv
import os
import sys

import h5py
import numpy as np


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def s(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def check_replay(f, ranks, threads, specs):
    if not os.path.exists(f):
        fail("%s missing" % f)
    with h5py.File(f, "r") as h:
        if s(h.attrs["format"]) != "kvstream-results":
            fail("%s: format %s" % (f, h.attrs["format"]))
        if int(h.attrs["ranks"]) != ranks or int(h.attrs["threads"]) != threads:
            fail("%s: ran with %s ranks x %s threads, expected %d x %d" % (f, h.attrs["ranks"], h.attrs["threads"],
                                                                          ranks, threads))
        M = h["methods"]
        specs_in = {s(M[g].attrs["spec"]): g for g in M}
        if "exact" not in M or int(M["exact"].attrs["is_reference"]) != 1:
            fail("%s: no exact reference" % f)
        ex = M["exact"]
        if np.any(ex["rel_error"][...] != 0):
            fail("%s: exact rel_error not all 0" % f)
        S, m = int(h.attrs["streams"]), int(h.attrs["queries"])
        if ex["rel_error"].shape != (S, m):
            fail("%s: rel_error shape %s, expected %s" % (f, ex["rel_error"].shape, (S, m)))
        exact_mem = int(ex.attrs["memory_bytes"])
        for sp in specs:
            if sp not in specs_in:
                fail("%s: no method with spec %s (have %s)" % (f, sp, sorted(specs_in)))
            g = M[specs_in[sp]]
            e = g["rel_error"][...]
            if not np.all(np.isfinite(e)) or not np.any(e > 0):
                fail("%s: %s rel_error not finite or all 0" % (f, sp))
            mem = int(g.attrs["memory_bytes"])
            if not 0 < mem < exact_mem:
                fail("%s: %s memory_bytes %d not below exact's %d" % (f, sp, mem, exact_mem))
            print("ok: %s: %s memory %d < exact %d, mean rel_error %.3g" % (os.path.basename(f), sp, mem, exact_mem,
                                                                          e.mean()))
        extra = set(specs_in) - set(specs) - {"exact"}
        if extra:
            fail("%s: unexpected methods %s" % (f, extra))
    print("ok: %s: %d ranks x %d threads, exact rel_error all 0" % (os.path.basename(f), ranks, threads))


def check_same(a, b):
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        if sorted(x["methods"]) != sorted(y["methods"]):
            fail("methods differ: %s vs %s" % (sorted(x["methods"]), sorted(y["methods"])))
        n = 0
        for g in x["methods"]:
            for d in ("rel_error", "bound_ratio", "outputs"):
                if (d in x["methods"][g]) != (d in y["methods"][g]):
                    fail("/methods/%s/%s in only one file" % (g, d))
                if d in x["methods"][g]:
                    if not np.array_equal(x["methods"][g][d][...], y["methods"][g][d][...]):
                        fail("/methods/%s/%s differs" % (g, d))
                    n += 1
            for k in ("memory_bytes", "peak_memory_bytes", "kept_tokens", "clusters"):
                if x["methods"][g].attrs[k] != y["methods"][g].attrs[k]:
                    fail("%s of %s differs" % (k, g))
    print("ok: %s and %s bitwise equal (%d datasets)" % (os.path.basename(a), os.path.basename(b), n))


def check_sweep(d, specs):
    for i, sp in enumerate(specs):
        check_replay(os.path.join(d, "task-%03d.h5" % i), 1, 1, [sp])
    extra = sorted(set(os.listdir(d)) - {"task-%03d.h5" % i for i in range(len(specs))})
    if extra:
        fail("%s: unexpected files %s (checkpoints left?)" % (d, extra))


def check_scaling(d, per_core, points):
    toks = set()
    want = []
    for p in points:
        r, t = map(int, p.split(":"))
        f = os.path.join(d, "r%d_t%d.h5" % (r, t))
        check_replay(f, r, t, [])
        with h5py.File(f, "r") as h:
            n = int(h.attrs["tokens"])
            wall = float(h.attrs["wall_seconds"])
        if per_core != "-" and n != int(per_core) * r * t:
            fail("%s: %d tokens, expected %d" % (f, n, int(per_core) * r * t))
        toks.add(n)
        want.append((r, t, n, wall))
    if per_core == "-" and len(toks) != 1:
        fail("strong scaling files of different sizes: %s" % toks)
    with open(os.path.join(d, "scaling.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = {(int(x["ranks"]), int(x["threads"])): x for x in rows}
    if set(got) != {(r, t) for r, t, _, _ in want}:
        fail("scaling.csv points %s, expected %s" % (sorted(got), [(r, t) for r, t, _, _ in want]))
    for r, t, n, wall in want:
        x = got[(r, t)]
        if int(x["tokens"]) != n or abs(float(x["time_s"]) - wall) > 1e-12 * wall:
            fail("scaling.csv %dx%d: %s, expected tokens %d time %r" % (r, t, x, n, wall))
    for f in ("scaling.md", "scaling.png"):
        if os.path.getsize(os.path.join(d, f)) < 100:
            fail("%s/%s too small" % (d, f))
    print("ok: %s: %d points, scaling.csv times = wall_seconds, scaling.md and .png written" % (d, len(want)))


cmd = sys.argv[1]
if cmd == "replay":
    check_replay(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
elif cmd == "same":
    check_same(sys.argv[2], sys.argv[3])
elif cmd == "sweep":
    check_sweep(sys.argv[2], sys.argv[3:])
elif cmd == "scaling":
    check_scaling(sys.argv[2], sys.argv[3], sys.argv[4:])
else:
    fail("unknown check " + cmd)
