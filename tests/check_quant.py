#!/usr/bin/python3
"""The quantised caches kivi and qjl through `kvstream replay`.

usage: check_quant.py KVSTREAM WORKDIR

On a clustered trace (1 stream x 32768 tokens, d = dv = 64), replayed under
1 and 3 ranks (shard chunk 256, a multiple of kivi's group 32):
- every rel_error finite, every method answers;
- kivi:bits=8: p95 rel_error <= 1% with memory_bytes <= 35% of exact's;
  2-bit kivi (the default) <= 12% of exact's memory and less accurate than
  8-bit; qjl (default m = 2d, float values) <= 60%;
- kivi:budget=10% and qjl:budget=10%: memory_bytes <= 10% of n (d + dv) 4;
- fixed-parameter kivi and qjl give the same outputs at 3 ranks as at 1
  (within 1e-6 of the output scale: only the merge order differs), and the
  same memory within 1% for kivi (qjl holds S on every rank: reported);
- qjl is deterministic for a seed (bitwise equal reruns) and another
  --seed changes it;
- bits_per_token = memory_bytes x 8 / (S n) for every method, 32 (d + dv)
  for exact's allocated rows within its run table;
- `kvstream methods` lists kivi and qjl under "quantisation"; bad
  parameters and budgets too small exit 2 with one line;
- `kvstream pareto` runs kivi and qjl at 10% and 50%, and analysis/pareto.py
  draws them with another run's window curve in one figure (one exact row)."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
n, d, S = 32768, 64, 1
trace = os.path.join(work, "quant.h5")
r = run(mpi_cmd(1, exe, "gen", "--kind", "clustered", "--clusters", "32", "--streams", str(S), "--tokens", str(n),
                "--dim", str(d), "--queries", "32", "--seed", "3", "--chunk", "1024", "-o", trace))
if r.returncode:
    fail("gen: " + r.stderr)

METHODS = ["exact", "kivi:bits=8", "kivi", "qjl", "kivi:budget=10%", "qjl:budget=10%", "qjl:vbits=4,m=96"]


def replay(P, out, *extra):
    r = run(mpi_cmd(P, exe, "replay", trace, "--methods", ",".join(METHODS), "--shard-chunk", "256", "--save-outputs",
                    "-q", "-o", out, *extra), timeout=600)
    if r.returncode:
        fail("np=%d replay failed: %s" % (P, r.stderr))
    res = {}
    with h5py.File(out, "r") as f:
        for m in METHODS:
            g = f["methods"][m]
            res[m] = dict(g.attrs)
            res[m]["rel"] = g["rel_error"][...]
            res[m]["out"] = g["outputs"][...].astype(np.float64)
    return res, r.stdout


exact_bytes = n * (d + d) * 4  # per stream: the unit of budget=%
runs = {}
for P in (1, 3):
    res, table = replay(P, os.path.join(work, "q-np%d.h5" % P))
    runs[P] = res
    if "bits/tok" not in table:
        fail("the replay table has no bits/tok column:\n" + table)
    ex = res["exact"]["memory_bytes"]
    for m in METHODS:
        a = res[m]
        if not np.all(np.isfinite(a["rel"])):
            fail("np=%d %s: non-finite rel_error" % (P, m))
        bpt = a["bits_per_token"]
        want = a["memory_bytes"] * 8.0 / (S * n)
        if abs(bpt - want) > 1e-9 * want:
            fail("np=%d %s: bits_per_token %r, memory_bytes x 8 / (S n) = %r" % (P, m, bpt, want))
        print("np=%d %-18s memory %9d (%.2f%% of exact, %.2f bits/token), p95 error %.4g" % (
            P, m, a["memory_bytes"], 100.0 * a["memory_bytes"] / ex, bpt, np.percentile(a["rel"], 95)))
    if res["exact"]["bits_per_token"] < 32 * 2 * d:
        fail("np=%d exact: %.1f bits per token, below 32 (d + dv)" % (P, res["exact"]["bits_per_token"]))
    p95 = {m: float(np.percentile(res[m]["rel"], 95)) for m in METHODS}
    frac = {m: res[m]["memory_bytes"] / ex for m in METHODS}
    if not (p95["kivi:bits=8"] <= 0.01 and frac["kivi:bits=8"] <= 0.35):
        fail("np=%d kivi:bits=8: p95 %.4g (want <= 1%%) at %.3f of exact (want <= 0.35)" % (
            P, p95["kivi:bits=8"], frac["kivi:bits=8"]))
    if not frac["kivi"] <= 0.12:
        fail("np=%d kivi (2 bits): %.3f of exact's memory (want <= 0.12)" % (P, frac["kivi"]))
    if not p95["kivi"] > p95["kivi:bits=8"]:
        fail("np=%d 2-bit kivi (p95 %.3g) is not less accurate than 8-bit (%.3g)" % (P, p95["kivi"],
                                                                                   p95["kivi:bits=8"]))
    if not frac["qjl"] <= 0.60:
        fail("np=%d qjl: %.3f of exact's memory (want <= 0.60)" % (P, frac["qjl"]))
    for m in ("kivi:budget=10%", "qjl:budget=10%"):
        if res[m]["memory_bytes"] > 0.10 * exact_bytes * S:
            fail("np=%d %s: memory_bytes %d over the budget %d" % (P, m, res[m]["memory_bytes"],
                                                                  0.10 * exact_bytes * S))

# P-invariance of the fixed-parameter caches
for m in ("kivi:bits=8", "kivi", "qjl", "qjl:vbits=4,m=96"):
    a, b = runs[1][m]["out"], runs[3][m]["out"]
    tol = 1e-6 * max(1.0, float(np.abs(a).max()))
    diff = float(np.abs(a - b).max())
    print("%-18s outputs np=1 vs np=3: max |diff| %.3g (tol %.3g)" % (m, diff, tol))
    if diff > tol:
        fail("%s: outputs differ between 1 and 3 ranks by %.3g" % (m, diff))
for m in ("kivi:bits=8", "kivi"):
    m1, m3 = runs[1][m]["memory_bytes"], runs[3][m]["memory_bytes"]
    if abs(m3 - m1) > 0.01 * m1:
        fail("%s: memory %d at 1 rank, %d at 3" % (m, m1, m3))

# determinism for a seed, and the seed matters
again, _ = replay(3, os.path.join(work, "q-np3-again.h5"))
if not np.array_equal(again["qjl"]["out"], runs[3]["qjl"]["out"]):
    fail("qjl: two runs with the same seed differ")
other, _ = replay(3, os.path.join(work, "q-np3-seed.h5"), "--seed", "12345")
if np.array_equal(other["qjl"]["out"], runs[3]["qjl"]["out"]):
    fail("qjl: --seed does not change the projection")
if not np.array_equal(other["kivi"]["out"], runs[3]["kivi"]["out"]):
    fail("kivi depends on --seed (it is deterministic)")

# `kvstream methods`
r = run([exe, "methods"])
txt = r.stdout
if r.returncode or "\nquantisation" not in txt:
    fail("kvstream methods has no quantisation group:\n" + txt)
q = txt[txt.index("\nquantisation"):]
for name in ("kivi", "qjl"):
    if ("\n  %s " % name) not in q:
        fail("kvstream methods does not list %s under quantisation" % name)
for p in ("bits", "group", "residual", "budget", "vbits", " m "):
    if p not in q:
        fail("kvstream methods: parameter %r of kivi/qjl missing" % p)

# bad input: one line, exit 2
for spec, word in (("kivi:bits=3", "bits"), ("kivi:bits=4,budget=10%", "budget"), ("qjl:m=12", "m=12"),
                   ("qjl:vbits=5", "vbits"), ("kivi:budget=1%", "budget"), ("qjl:budget=1%", "budget"),
                   ("qjl:m=64,budget=50%", "budget")):
    r = run(mpi_cmd(1, exe, "replay", trace, "--methods", spec, "-q"))
    lines = [l for l in r.stderr.splitlines() if l.startswith("kvstream")]
    if r.returncode != 2 or len(lines) != 1 or word not in lines[0]:
        fail("%s: want exit 2 and one line naming %r, got %d: %r" % (spec, word, r.returncode, r.stderr))
# the demo's figure: kvstream pareto for kivi and qjl at budgets they can
# hold, drawn with an eviction method's run in one figure (analysis/pareto.py)
pf = []
for name, methods, budgets in (("evict", "window", "2.5%,5%"), ("quant", "kivi,qjl", "10%,50%")):
    out = os.path.join(work, "pareto-%s.h5" % name)
    r = run(mpi_cmd(2, exe, "pareto", trace, "--methods", methods, "--budgets", budgets, "--shard-chunk", "256",
                    "-q", "-o", out), timeout=600)
    if r.returncode:
        fail("pareto %s: %s" % (methods, r.stderr))
    pf.append(out)
prefix = os.path.join(work, "pareto-fig")
r = run(["/usr/bin/python3", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "analysis", "pareto.py")]
        + pf + ["-o", prefix])
if r.returncode:
    fail("pareto.py: " + r.stderr)
with open(prefix + ".csv") as f:
    rows = [l.split(",") for l in f.read().splitlines()[1:]]
got = sorted((row[0], row[1]) for row in rows)
want = sorted([("exact", "none"), ("window", "2.5%"), ("window", "5%"), ("kivi", "10%"), ("kivi", "50%"),
               ("qjl", "10%"), ("qjl", "50%")])
if got != want:
    fail("pareto.py over two files: rows %r, want %r" % (got, want))
with open(prefix + ".png", "rb") as f:
    if f.read(8) != b"\x89PNG\r\n\x1a\n":
        fail("pareto.py wrote no PNG")
print("check_quant: ok")
