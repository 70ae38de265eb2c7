#!/usr/bin/python3
"""Methods --budget cannot hold, and the per-stream error figures, on a
recorded trace (stories260K: 5 layers x 4 kv heads = 20 streams).

usage: check_fit.py KVSTREAM MODEL WORKDIR

does-not-fit, at 1 and 2 ranks:
  - `--methods window,kivi,h2o --budget 1%`: exit 0; kivi (which needs 2-bit
    groups plus a float residual group) gets the table row "does not fit:
    needs N bytes" and a /does_not_fit/kivi group (needs_bytes N, budget_bytes
    the budget), no /methods/kivi group; window and h2o run; N is the same at
    1 and 2 ranks;
  - N is the least budget kivi takes: kivi:budget=NB replays (exit 0) and
    kivi:budget=(N-1)B, an explicit parameter, is refused with one line, exit 2;
  - the same with --strict: one line, exit 2, no table.
per_stream, on the 1- and 2-rank files:
  - every method's per_stream/rel_error_p50, _p95, _max are the nearest-rank
    percentiles of its rel_error row, rel_error_mean the mean without the small
    outputs, bound_ratio_p95 likewise (rel. 1e-12: the same doubles);
  - small_outputs counts the queries whose /output_norm_ratio is below the
    root attribute small_output_fraction; output_norm_ratio is
    |z*| / sqrt(sum_{t<p} |v_t|^2 / p) recomputed in float64 (rel. 1e-6: the
    trace is float32, the replay accumulates in double);
  - layer and kv_head are s // n_kv_heads and s % n_kv_heads of the trace;
  - window's and h2o's per-stream figures agree between 1 and 2 ranks (rel.
    1e-9: the same rel_error up to the merge's rounding; small_outputs equal).
"""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, load_trace64, mpi_cmd, reference_outputs, run

exe, model, work = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(work, exist_ok=True)
checks = 0


def ok(msg):
    global checks
    checks += 1
    print("ok: " + msg)


def path(name):
    return os.path.join(work, name)


trace = path("rec.h5")
r = run(mpi_cmd(1, exe, "record", "--model", model, "--tokens", "96", "-o", trace), timeout=300)
if r.returncode:
    fail("record: " + r.stderr)
BUDGET = "1%"


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
if needs[1] != needs[2]:
    fail("needs_bytes differs between 1 and 2 ranks: %d vs %d" % (needs[1], needs[2]))
ok("needs_bytes is the same at 1 and 2 ranks")

N = needs[2]
r = replay(2, path("fit-n.h5"), "kivi:budget=%dB" % N)
if r.returncode:
    fail("kivi:budget=%dB (the reported need) is refused: %s" % (N, r.stderr))
line = one_line_error(replay(2, path("fit-n1.h5"), "kivi:budget=%dB" % (N - 1)), "kivi:budget=%dB" % (N - 1))
if "budget" not in line:
    fail("the explicit-budget error does not name the budget: " + line)
ok("kivi takes budget=%dB and refuses an explicit budget=%dB in one line, exit 2" % (N, N - 1))

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


per = {}
for P, out in files.items():
    with h5py.File(out, "r") as f:
        frac = float(f.attrs["small_output_fraction"])
        onr = f["output_norm_ratio"][...]
        if not close(onr, onr_np, 1e-6):
            fail("np=%d: output_norm_ratio differs from numpy's (max rel %.3g)" %
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
                    fail("np=%d %s: per_stream/%s %s, expected %s" % (P, g, k, ps[k][...], np.asarray(v)))
            if not np.array_equal(ps["small_outputs"][...], small.sum(axis=1)):
                fail("np=%d %s: per_stream/small_outputs %s, expected %s" % (P, g, ps["small_outputs"][...],
                                                                            small.sum(axis=1)))
            if int(m.attrs["small_outputs"]) != int(small.sum()):
                fail("np=%d %s: small_outputs attribute %d, expected %d" % (P, g, m.attrs["small_outputs"],
                                                                           small.sum()))
            if not (np.array_equal(ps["layer"][...], np.arange(S) // H) and
                    np.array_equal(ps["kv_head"][...], np.arange(S) % H)):
                fail("np=%d %s: layer/kv_head are not s // %d, s %% %d" % (P, g, H, H))
            per[(P, g)] = {k: ps[k][...] for k in ps}
    ok("np=%d: per_stream of %d methods matches rel_error, bound_ratio and output_norm_ratio (%d small outputs "
       "of %d)" % (P, len(per) // P if P == 1 else len(per) // 2, int(small.sum()), small.size))
for g in ("window", "h2o", "exact"):
    a, b = per[(1, g)], per[(2, g)]
    for k in a:
        if not close(a[k], b[k], 1e-9):
            fail("%s: per_stream/%s differs between 1 and 2 ranks: %s vs %s" % (g, k, a[k], b[k]))
ok("per_stream of window, h2o and exact agree between 1 and 2 ranks")
print("check_fit: %d passed, 0 failed" % checks)
