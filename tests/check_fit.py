#!/usr/bin/python3
"""Methods --budget cannot hold, and the per-stream error figures, on a
recorded trace (stories260K: 5 layers x 4 kv heads = 20 streams).

usage: check_fit.py KVSTREAM MODEL WORKDIR

does-not-fit, at 1 and 2 ranks:
  - `--methods window,kivi,h2o --budget 50%` (256 tokens): exit 0; kivi
    (2-bit groups plus a float group per rank) gets the table row "does not
    fit: needs N bytes" and a /does_not_fit/kivi group (needs_bytes N,
    budget_bytes the budget), no /methods/kivi group; window and h2o run;
  - N is the least budget kivi takes at that rank count (its minimum grows
    with P: a float group per rank): kivi:budget=NB replays (exit 0) and
    kivi:budget=(N-1)B, an explicit parameter, is refused with one line, exit 2;
  - the same with --strict: one line, exit 2, no table.
per_stream, on the 1- and 2-rank files:
  - every method's per_stream/rel_error_p50, _p95, _max are the nearest-rank
    percentiles of its rel_error row, rel_error_mean the mean without the small
    outputs, bound_ratio_p95 likewise (rel. 1e-12: the same doubles);
  - small_outputs counts the queries whose /output_norm_ratio is below the
    root attribute small_output_fraction; output_norm_ratio is
    |z*| / sqrt(sum_{t<p} |v_t|^2 / p) recomputed in float64 (rel. 1e-4: the
    replay's exact attention forms logits from float32 products, whose error
    of up to |logit| x 2^-23 (logits near 100 here) moves the weights by about
    1e-5);
  - layer and kv_head are s // n_kv_heads and s % n_kv_heads of the trace;
  - with explicit sizes (window:W=64, h2o:tokens=64; under --budget their
    sizes follow the ranks' pages), window's and h2o's per-stream figures agree
    between 1 and 2 ranks to 2e-5 absolute (the ranks' partial sums round
    differently: logits near 100 formed in float32 carry up to 100 x 2^-23 =
    1.2e-5 of rounding, which moves an output, and an error measured against
    one, by about that; measured 8e-7) and small_outputs, layer, kv_head
    exactly.
"""
import functools
import os
import sys

import h5py
import numpy as np

from kvtest import fail, load_trace64, mpi_cmd, reference_outputs, run

exe, model, work = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(work, exist_ok=True)
path = functools.partial(os.path.join, work)
passed = []


def ok(msg):
    passed.append(msg)
    print("ok: " + msg)


trace = path("rec.h5")
r = run(mpi_cmd(1, exe, "record", "--model", model, "--tokens", "256", "-o", trace), timeout=300)
if r.returncode:
    fail("record: " + r.stderr)
BUDGET = "50%"


def replay(P, out, methods, *extra):
    return run(mpi_cmd(P, exe, "replay", trace, "--methods", methods, "-q", "-o", out, *extra), timeout=600)


def one_line_error(r, what):
    lines = [x for x in r.stderr.splitlines() if x.startswith("kvstream")]
    if r.returncode != 2 or len(lines) != 1:
        fail("%s: expected one error line and exit 2, got %d:\n%s" % (what, r.returncode, r.stderr))
    return lines[0]


# ---- does not fit ----------------------------------------------------------
needs = {}
files = {}
for P in (1, 2):
    out = path("fit-np%d.h5" % P)
    r = replay(P, out, "window,kivi,h2o", "--budget", BUDGET)
    if r.returncode:
        fail("np=%d --budget %s: exit %d: %s" % (P, BUDGET, r.returncode, r.stderr))
    row = [x for x in r.stdout.splitlines() if x.startswith("kivi") and "does not fit: needs" in x]
    if len(row) != 1:
        fail("np=%d: no 'kivi ... does not fit: needs N bytes' row:\n%s" % (P, r.stdout))
    with h5py.File(out, "r") as f:
        if "kivi" in f["methods"] or "kivi" not in f.get("does_not_fit", {}):
            fail("np=%d: kivi should be in /does_not_fit and not in /methods: %s" % (P, list(f["methods"])))
        for g in ("window", "h2o", "exact"):
            if g not in f["methods"] or "rel_error" not in f["methods"][g]:
                fail("np=%d: %s did not run" % (P, g))
        a = f["does_not_fit/kivi"].attrs
        needs[P] = int(a["needs_bytes"])
        budget = int(a["budget_bytes"])
        if str(needs[P]) not in row[0]:
            fail("np=%d: the row does not give needs_bytes %d: %s" % (P, needs[P], row[0]))
        if not needs[P] > budget > 0:
            fail("np=%d: needs_bytes %d should exceed budget_bytes %d" % (P, needs[P], budget))
    files[P] = out
    ok("np=%d: kivi does not fit --budget %s (%d bytes): needs %d bytes; window, h2o and exact ran, exit 0"
       % (P, BUDGET, budget, needs[P]))
for P, N in needs.items():
    r = replay(P, path("fit-n.h5"), "kivi:budget=%dB" % N)
    if r.returncode:
        fail("np=%d: kivi:budget=%dB (the reported need) is refused: %s" % (P, N, r.stderr))
    line = one_line_error(replay(P, path("fit-n1.h5"), "kivi:budget=%dB" % (N - 1)), "kivi:budget=%dB" % (N - 1))
    if "budget" not in line:
        fail("the explicit-budget error does not name the budget: " + line)
    ok("np=%d: kivi takes budget=%dB and refuses an explicit budget=%dB in one line, exit 2" % (P, N, N - 1))

for P in (1, 2):
    r = replay(P, path("fit-strict.h5"), "window,kivi,h2o", "--budget", BUDGET, "--strict")
    line = one_line_error(r, "np=%d --strict" % P)
    if "kivi" not in line or r.stdout.strip():
        fail("np=%d --strict: the error should name kivi and no table be printed: %s\n%s" % (P, line, r.stdout))
    ok("np=%d --strict: %s" % (P, line))

# ---- per_stream --------------------------------------------------------------
K, V, Q, pos, scale, tattrs = load_trace64(trace)
S = K.shape[0]
H = int(tattrs["n_kv_heads"])
Z, _, _ = reference_outputs(trace)
vs = np.cumsum((V * V).sum(axis=2), axis=1)  # [S, n]: sum of |v|^2 over the first t + 1 tokens
onr_np = np.linalg.norm(Z, axis=2) / np.sqrt(vs[:, pos - 1] / pos)


def nearest(x, q):
    s = np.sort(x[~np.isnan(x)])
    return s[max(int(np.ceil(q * s.size)), 1) - 1]


def close(a, b, rtol):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.all((np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b))))


for P in (1, 2):
    out = path("pinv-np%d.h5" % P)
    r = replay(P, out, "window:W=64,name=window,h2o:tokens=64,name=h2o")
    if r.returncode:
        fail("np=%d: %s" % (P, r.stderr))
    files["pinv%d" % P] = out
per = {}
for P, out in files.items():
    with h5py.File(out, "r") as f:
        frac = float(f.attrs["small_output_fraction"])
        onr = f["output_norm_ratio"][...]
        if not close(onr, onr_np, 1e-4):
            fail("%s: output_norm_ratio differs from numpy's (max rel %.3g)" %
                 (P, np.nanmax(np.abs(onr - onr_np) / onr_np)))
        small = onr < frac
        for g in f["methods"]:
            m = f["methods"][g]
            ps = m["per_stream"]
            rel, bnd = m["rel_error"][...], m["bound_ratio"][...]
            want = {"rel_error_p50": [nearest(rel[s], 0.5) for s in range(S)],
                    "rel_error_p95": [nearest(rel[s], 0.95) for s in range(S)],
                    "rel_error_max": rel.max(axis=1),
                    "rel_error_mean": [rel[s][~small[s]].mean() if (~small[s]).any() else np.nan for s in range(S)],
                    "bound_ratio_p95": [nearest(bnd[s], 0.95) for s in range(S)]}
            for k, v in want.items():
                if not close(ps[k][...], v, 1e-12):
                    fail("%s %s: per_stream/%s %s, expected %s" % (P, g, k, ps[k][...], np.asarray(v)))
            if not np.array_equal(ps["small_outputs"][...], small.sum(axis=1)):
                fail("%s %s: per_stream/small_outputs %s, expected %s" % (P, g, ps["small_outputs"][...],
                                                                            small.sum(axis=1)))
            if int(m.attrs["small_outputs"]) != int(small.sum()):
                fail("%s %s: small_outputs attribute %d, expected %d" % (P, g, m.attrs["small_outputs"],
                                                                           small.sum()))
            if not (np.array_equal(ps["layer"][...], np.arange(S) // H) and
                    np.array_equal(ps["kv_head"][...], np.arange(S) % H)):
                fail("%s %s: layer/kv_head are not s // %d, s %% %d" % (P, g, H, H))
            per[(P, g)] = {k: ps[k][...] for k in ps}
    ok("%s: per_stream of every method matches rel_error, bound_ratio and output_norm_ratio (%d small outputs "
       "of %d)" % (os.path.basename(out), int(small.sum()), small.size))
for g in ("window", "h2o", "exact"):
    a, b = per[("pinv1", g)], per[("pinv2", g)]
    for k in a:
        if not np.all(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)) <= (2e-5 if a[k].dtype.kind == "f" else 0)):
            fail("%s: per_stream/%s differs between 1 and 2 ranks: %s vs %s" % (g, k, a[k], b[k]))
ok("per_stream of window, h2o and exact agree between 1 and 2 ranks")
print("check_fit: %d passed, 0 failed" % len(passed))
