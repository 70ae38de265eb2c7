#!/usr/bin/python3
"""The barrier sweep shows the seed paper's phase transition on small sizes.

usage: check_sweep.py KVSTREAM WORKDIR NP
- jl, d = 40 >= 4 ln n: the memory each method needs for p95 error <= eps
  grows (nearly) linearly in n: x4 tokens -> x >= 2.5 memory, every method.
- sphere, d = 3: SubGen's (and uniform sampling's) needed memory levels off:
  from n = 2048 to 32768 (x16) memory grows <= x4, and (SubGen) from 8192 to
  32768 (x4) <= x1.5.  SubGen's template fixes t = 8 and searches s: with t tied
  to s the reservoirs hold every key until clusters outgrow t.  Budgets of
  the randomised methods are judged by the median p95 over 5 seeds.
It also checks the /sweep table's layout and that exact attention puts
>= 0.9 of its mass on the jl target token at the default beta."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work, nprocs = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(work, exist_ok=True)
checks = 0


def sweep(kind, ns, d, methods, eps, extra=()):
    out = os.path.join(work, "sweep-%s-np%d.h5" % (kind, nprocs))
    r = run(mpi_cmd(nprocs, exe, "sweep", "--kind", kind, "--n", ",".join(map(str, ns)), "--d", str(d),
                    "--methods", methods, "--eps", str(eps), "--queries", "48", "--seed", "3",
                    "--workdir", work, "-o", out, *extra), timeout=900)
    print(r.stdout)
    if r.returncode != 0:
        fail("sweep %s failed: %s" % (kind, r.stderr))
    with h5py.File(out, "r") as f:
        g = f["sweep"]
        cols = {k: g[k][...] for k in ("n", "d", "method", "budget_bytes", "p95_error", "param", "met", "kind")}
        if abs(f.attrs["eps"] - eps) > 1e-12:
            fail("eps attribute")
    L = len(cols["n"])
    for k, v in cols.items():
        if len(v) != L:
            fail("/sweep/%s has %d rows, expected %d" % (k, len(v), L))
    table = {}
    for i in range(L):
        m = cols["method"][i].decode()
        table[(m, int(cols["n"][i]))] = (int(cols["budget_bytes"][i]), float(cols["p95_error"][i]), int(cols["met"][i]))
        if cols["met"][i] and not cols["p95_error"][i] <= eps:
            fail("row %d claims eps met with p95 %g" % (i, cols["p95_error"][i]))
    return table


# the jl construction: exact attention concentrates on the target
trace = os.path.join(work, "jl-check.h5")
r = run(mpi_cmd(nprocs, exe, "gen", "--kind", "jl", "--tokens", "1024", "--dim", "40", "--queries", "32",
                "--seed", "5", "-o", trace))
if r.returncode:
    fail(r.stderr)
with h5py.File(trace, "r") as t:
    K, Q, pos, tgt = t["keys"][0].astype(float), t["queries"][0].astype(float), t["query_pos"][...], t["query_target"][0]
    sc = t.attrs["scale"]
for j in range(len(pos)):
    a = sc * K[: pos[j]] @ Q[j]
    w = np.exp(a - a.max())
    w /= w.sum()
    if w[tgt[j]] < 0.9:
        fail("jl query %d puts only %.3f of its mass on the target" % (j, w[tgt[j]]))
checks += 1

jl_methods = "window:W=@,uniform:tokens=@,h2o:tokens=@,subgen:delta=0.5,t=@,s=@"
t = sweep("jl", (256, 1024), 40, jl_methods, 0.3)
for m in ("window:W=@", "uniform:tokens=@", "h2o:tokens=@", "subgen:delta=0.5,t=@,s=@"):
    small, big = t[(m, 256)][0], t[(m, 1024)][0]
    ratio = big / small
    print("jl %-28s memory n=256 %9d  n=1024 %9d  ratio %.2f" % (m, small, big, ratio))
    if ratio < 2.5:
        fail("jl: %s needs memory x%.2f for x4 tokens (expected ~linear, >= 2.5)" % (m, ratio))
    checks += 1

sp_methods = "subgen:delta=0.8,t=8,s=@,name=subgen,uniform:tokens=@,name=uniform"
# --seeds 5: a budget is judged by the median p95 over 5 seeds (one seed's
# p95 over 48 queries varies by 2-3x: the queries share nested samples)
t = sweep("sphere", (2048, 8192, 32768), 3, sp_methods, 0.1, ("--radius", "2", "--seeds", "5"))
for m in ("subgen", "uniform"):
    rows = [t[(m, n)] for n in (2048, 8192, 32768)]
    if not all(r[2] for r in rows):
        fail("sphere: %s did not reach eps" % m)
    r16, r4 = rows[2][0] / rows[0][0], rows[2][0] / rows[1][0]
    print("sphere %-8s memory n=2048 %8d  n=8192 %8d  n=32768 %8d  x16: %.2f  x4: %.2f"
          % (m, rows[0][0], rows[1][0], rows[2][0], r16, r4))
    # uniform's needed k is constant in theory, but its p95 relative error
    # is heavy-tailed here (z* is an average of zero-mean values, often
    # small): over seeds 3..5 the needed k at n = 2048 -> 32768 went
    # 52 -> 80, 384 -> 1024, 176 -> 208 (before the bottom-k sampler too), so
    # only SubGen, the method the theory is about, is held to x4 -> <= x1.5
    if r16 > 4.0 or (m == "subgen" and r4 > 1.5):
        fail("sphere: %s memory does not level off (x16 tokens -> x%.2f, x4 -> x%.2f)" % (m, r16, r4))
    checks += 1
print("check_sweep: %d passed, 0 failed" % checks)
