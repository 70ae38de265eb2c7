#!/usr/bin/python3
"""topk and h2o replays at P = 1..4 ranks: the rank count is a performance knob.

usage: check_global_methods.py topk|h2o|evict|scope TRACE RESULTS_NP1 [RESULTS_NP2 ...]
  - topk (global top-k, ties at the k-th all taken): outputs at every P equal
    P = 1's up to the float32 rounding of a double result (one ulp of the
    larger, plus 1e-12 of the stream's largest output for the double sums);
    topk with k >= n equals exact to 1e-6 (float32 logits);
  - h2o (global budget): memory_bytes <= the budget in bytes at every P
    ((tokens + every) x bytes per held token, summed over streams; budget=
    reserves the every tokens arriving between two decisions);
  - evict (tova, snapkv, and balancekv's merge-and-reduce): memory_bytes <=
    the budget at every P (5%: the token slots plus the kept query rows,
    counted once, fit in it, by the rule of tova.c / snapkv/snapkv.c /
    balancekv.c), finite
    errors, and with tokens >= n (nothing evicted) the outputs equal exact's
    to 1e-6 (float32 outputs, the same tokens summed in another order); and
    h2o, tova and snapkv, whose decisions are global, give P = 1's outputs
    at every P up to the rounding bound of topk, unless the run counted a
    near-tie (results attribute near_ties: then it is printed and the method
    is compared no further);
  - scope (h2o, tova, snapkv at 5% under --budget-scope trace: one budget
    shared by every stream): memory_bytes <= S x the stream's 5% at every P,
    and P = 1's outputs at every P as for evict."""
import sys

import h5py
import numpy as np

from kvtest import fail, rel

what, trace, results = sys.argv[1], sys.argv[2], sys.argv[3:]
with h5py.File(trace, "r") as t:
    S, n, d = t["keys"].shape
    dv = t["values"].shape[2]
slot = (d + dv) * 4 + 8 + 8 + 12  # h2o.c: key, value, index, score, three int32
EVERY = 16  # h2o's default decision spacing
H2O = {"h2o_tok": (300 + EVERY) * slot, "h2o_pct": int(0.05 * n * (d + dv) * 4)}


def same_as(a, b):
    """max |a - b| over the rounding bound of float32 outputs of double sums"""
    tol = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float32)).astype(np.float64)
    tol += 1e-12 * np.abs(b).max(axis=(1, 2), keepdims=True)
    return (np.abs(a - b) / tol).max()


def vs_first(first, path, P, k, out, ties):
    """P's outputs of method k against the first file's (P = 1), unless a
    near-tie was counted; returns the checks done"""
    if k not in first:
        first[k] = (out, ties)
        return 0
    if ties or first[k][1]:
        print("%s: P=%d %s: %d near-ties counted (P=1: %d), not compared" % (path, P, k, ties, first[k][1]))
        return 0
    worst = same_as(out, first[k][0])
    print("%s: P=%d %s vs P=1: %.2f of the rounding bound" % (path, P, k, worst))
    if worst > 1:
        fail("%s: %s at P=%d differs from P=1 (%.3g of the rounding bound)" % (path, k, P, worst))
    return 1


checks = 0
base = None
if what == "scope":
    first = {}
    for path in results:
        with h5py.File(path, "r") as r:
            P, g = int(r.attrs["ranks"]), r["methods"]
            for k in ("h2o_pct", "tova_pct", "snap_pct"):
                mem, budget = int(g[k].attrs["memory_bytes"]), S * int(0.05 * n * (d + dv) * 4)
                out, ties = g[k]["outputs"][...].astype(np.float64), int(g[k].attrs["near_ties"])
                if mem > budget:
                    fail("%s: %s at P=%d: memory %d over the scope's budget %d" % (path, k, P, mem, budget))
                print("%s: P=%d %s memory %d, budget %d" % (path, P, k, mem, budget))
                checks += 1 + vs_first(first, path, P, k, out, ties)
    print("check_global_methods: %d passed, 0 failed" % checks)
    sys.exit(0)
if what == "evict":
    base_err, base_out = {}, {}
    for path in results:
        with h5py.File(path, "r") as r:
            P = int(r.attrs["ranks"])
            g = r["methods"]
            ex = g["exact"]["outputs"][...].astype(np.float64)
            for k in ("tova_pct", "snap_pct", "bkv_pct"):
                mem, err = int(g[k].attrs["memory_bytes"]), g[k]["rel_error"][...]
                budget = S * int(0.05 * n * (d + dv) * 4)
                base_err.setdefault(k, float(err.mean()))
                print("%s: P=%d %s memory %d bytes, budget %d, mean error %.4g (P=1: %.4g)"
                      % (path, P, k, mem, budget, float(err.mean()), base_err[k]))
                if mem > budget or not np.all(np.isfinite(err)):
                    fail("%s: %s at P=%d: memory %d over budget %d or non-finite errors" % (path, k, P, mem, budget))
                checks += 1
            for k in ("tova_all", "snap_all", "bkv_all"):
                e = float(np.abs(g[k]["outputs"][...].astype(np.float64) - ex).max() / max(1.0, np.abs(ex).max()))
                print("%s: P=%d %s (tokens >= n) vs exact: %.3g" % (path, P, k, e))
                if e > 1e-6:
                    fail("%s: %s with tokens >= n differs from exact by %.3g at P=%d" % (path, k, e, P))
                checks += 1
            for k in ("h2o_tok", "h2o_pct", "tova_pct", "snap_pct", "tova_all", "snap_all"):
                out, ties = g[k]["outputs"][...].astype(np.float64), int(g[k].attrs["near_ties"])
                checks += vs_first(base_out, path, P, k, out, ties)
    print("check_global_methods: %d passed, 0 failed" % checks)
    sys.exit(0)
for path in results:
    with h5py.File(path, "r") as r:
        P = int(r.attrs["ranks"])
        out = {k: r["methods"][k]["outputs"][...].astype(np.float64) for k in ("topk5", "topk40", "topkall", "exact")}
        mem = {k: int(r["methods"][k].attrs["memory_bytes"]) for k in H2O}
    e = rel(out["topkall"], out["exact"]).max()
    if what == "topk" and e > 1e-6:
        fail("%s: topk with k >= n differs from exact by %.3g" % (path, e))
    for k, b in H2O.items() if what == "h2o" else ():
        budget = S * b
        print("%s: P=%d %s memory %d bytes, budget %d" % (path, P, k, mem[k], budget))
        if mem[k] > budget:
            fail("%s: %s holds %d bytes summed over %d ranks, over its budget %d" % (path, k, mem[k], P, budget))
    checks += 1
    if base is None or what != "topk":
        base = out
        continue
    for k in ("topk5", "topk40", "topkall"):
        a, b = out[k], base[k]
        tol = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float32)).astype(np.float64)
        tol += 1e-12 * np.abs(b).max(axis=(1, 2), keepdims=True)
        worst = same_as(a, b)
        print("%s: P=%d %s vs P=1: max |diff| %.3g (%.2f of the rounding bound)" % (path, P, k, np.abs(a - b).max(), worst))
        if worst > 1:
            j = np.unravel_index((np.abs(a - b) / tol).argmax(), a.shape)
            fail("%s: %s at P=%d differs from P=1 at %s by %.3g > %.3g" % (path, k, P, j, abs(a[j] - b[j]), tol[j]))
        checks += 1
print("check_global_methods: %d passed, 0 failed" % checks)
