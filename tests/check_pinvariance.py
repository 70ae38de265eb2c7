#!/usr/bin/python3
"""P is a performance knob only: global parameters and budgets give the same answer at every P.

usage: check_pinvariance.py KVSTREAM WORKDIR [NP_MAX]
A clustered trace (2 streams x 20000 tokens, d = 16, chunks of 400 so every
rank holds tokens) is replayed under 1..NP_MAX ranks.
- Global parameters, same answers: every method that declares itself
  P-invariant (`kvstream methods --specs`, pinv=yes: e.g. window and sinks
  through the horizon, uniform's bottom-k priorities of the global index,
  topk's global k largest logits, kivi's groups by global index inside
  the shard chunks, qjl's projection shared by all ranks) gives
  outputs equal to P = 1 within 1e-6 * max(1, |z|_inf): the
  outputs are stored as float32 (relative rounding 6e-8) and only the
  grouping of the float tile sums and of the rank merge differs with P.
- One budget knob: --budget 5% (5% of exact's n (d + dv) 4 bytes per stream)
  for every method taking budget= (budget=yes) but the quantised caches,
  whose floor is over 5% (kind quantisation): memory_bytes (the
  time-aligned peak summed over ranks) <= S * budget * 1.03 at every P, and
  within 5% across P (except the sketches, kind sketch: SubGen's per-rank
  clusters cost memory with P: reported, in budget).
The shard chunk (800 tokens) is a multiple of every kivi group size used.
- Bad budgets (0, negative, over 100%, unknown unit, too small to hold a
  token with --strict or in the method's own spec) exit 2 with one line
  naming the budget; --budget 1 (byte) without --strict leaves window out
  with a "does not fit" row and exits 0."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, method_specs, methods_arg, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
npmax = int(sys.argv[3]) if len(sys.argv) > 3 else 4
os.makedirs(work, exist_ok=True)
trace = os.path.join(work, "pinv.h5")
S, n, d = 2, 20000, 16
r = run(mpi_cmd(1, exe, "gen", "--kind", "clustered", "--clusters", "8", "--streams", str(S), "--tokens", str(n),
                "--dim", str(d), "--queries", "30", "--chunk", "400", "--seed", "11", "-o", trace))
if r.returncode:
    fail("gen failed: " + r.stderr)

invariant = method_specs(exe, semantics="full", pinv="yes")
same = methods_arg(invariant)
labels = [m["spec"] for m in invariant]
outs = {}
for P in range(1, npmax + 1):
    out = os.path.join(work, "same-np%d.h5" % P)
    r = run(mpi_cmd(P, exe, "replay", trace, "--methods", same, "--shard-chunk", "800", "--save-outputs", "-q",
                    "-o", out), timeout=300)
    if r.returncode:
        fail("np=%d replay failed: %s" % (P, r.stderr))
    with h5py.File(out, "r") as f:
        outs[P] = {l: f["methods"][l]["outputs"][...].astype(np.float64) for l in labels}
for P in range(2, npmax + 1):
    for l in labels:
        a, b = outs[1][l], outs[P][l]
        tol = 1e-6 * max(1.0, float(np.abs(a).max()))
        diff = float(np.abs(a - b).max())
        print("np=%d %-28s max |z_P - z_1| = %.3g (tolerance %.3g)" % (P, l, diff, tol))
        if not diff <= tol:
            fail("np=%d %s: outputs differ from np=1 by %.3g > %.3g" % (P, l, diff, tol))

# one budget knob
budget_frac = 0.05
B = int(budget_frac * n * (d + d) * 4)
# the quantised caches keep every token (their floor is about bits/32 of
# exact, over 5%): check_quant.py checks their budgets
budgeted_specs = [m for m in method_specs(exe, semantics="full", budget="yes") if m["kind"] != "quantisation"]
budgeted = [m["name"] for m in budgeted_specs]
if os.environ.get("KV_PINV_BUDGETED"):
    budgeted = os.environ["KV_PINV_BUDGETED"].split(",")
sketch = {m["name"] for m in budgeted_specs if m["kind"] == "sketch"}
mem = {}
for P in range(1, npmax + 1):
    out = os.path.join(work, "budget-np%d.h5" % P)
    r = run(mpi_cmd(P, exe, "replay", trace, "--methods", ",".join(budgeted), "--budget", "5%", "--shard-chunk",
                    "800", "-q", "-o", out), timeout=300)
    if r.returncode:
        fail("np=%d budget replay failed: %s" % (P, r.stderr))
    with h5py.File(out, "r") as f:
        for m in budgeted:
            g = f["methods"][m]
            mb = int(g.attrs["memory_bytes"])
            mem.setdefault(m, []).append(mb)
            err = g["rel_error"][...]
            print("np=%d %-8s memory %d bytes (budget %d x %d streams = %d: %.3f), mean error %.3g"
                  % (P, m, mb, B, S, S * B, mb / (S * B), float(err.mean())))
            if not np.all(np.isfinite(err)):
                fail("np=%d %s: non-finite errors" % (P, m))
            if mb > 1.03 * S * B:
                fail("np=%d %s: memory_bytes %d is over its budget %d (x1.03)" % (P, m, mb, S * B))
# SubGen's clusters are per rank (every rank sees every natural cluster and
# holds its own centre and reservoir): what distribution costs the sketches
# is paid inside the budget and reported, so only their budget is checked
for m, v in mem.items():
    print("%-8s memory_bytes at P = 1..%d: %s (max/min %.3f)" % (m, npmax, v, max(v) / min(v)))
    if m not in sketch and max(v) > 1.05 * min(v):
        fail("%s: memory_bytes across P = 1..%d varies more than 5%%: %s" % (m, npmax, v))

# bad budgets: one line, exit 2
# (--budget 1 byte holds no window: with --strict an error; without, a "does not fit" row, exit 0)
bad = [["--budget", "0"], ["--budget", "-5%"], ["--budget", "150%"], ["--budget", "10parsecs"],
       ["--budget", "1", "--strict"], ["--methods", "window:budget=0"], ["--methods", "uniform:budget=2%,tokens=8"]]
r = run(mpi_cmd(2, exe, "replay", trace, "-q", "--methods", "window", "--budget", "1"))
if r.returncode or not any(x.startswith("window") and "does not fit: needs" in x for x in r.stdout.splitlines()):
    fail("--methods window --budget 1: want exit 0 and a 'does not fit' row, got %d: %s%s" % (r.returncode, r.stdout,
                                                                                            r.stderr))
print("%-40s -> exit 0, %s" % ("--methods window --budget 1", [x for x in r.stdout.splitlines() if "does not" in x][0]))
for args in bad:
    a = ["--methods", "window"] + args if args[0] == "--budget" else args
    r = run(mpi_cmd(2, exe, "replay", trace, "-q", *a))
    lines = [x for x in r.stderr.splitlines() if x.startswith("kvstream")]  # not mpiexec's own report
    if r.returncode != 2 or len(lines) != 1 or "budget" not in lines[0]:
        fail("%s: want exit 2 and one line naming the budget, got %d: %r" % (" ".join(a), r.returncode, r.stderr))
    print("%-40s -> %s" % (" ".join(a), lines[0]))
print("ok")
