#!/usr/bin/python3
"""`kvstream pareto` and analysis/pareto.py (docs/PARETO.md).

usage: check_pareto.py KVSTREAM WORKDIR rows NP | held NP | plot | bad
- rows NP: window (budget=, no seed=) and uniform (budget= and seed=) x 3
  budgets x 2 seeds under NP ranks: /pareto has exactly the expected
  (method, budget, seed) rows (exact, 3 window rows with seed -1, 6 uniform
  rows), equal-length columns, no NaN, window's memory non-decreasing in
  budget; every row's statistics equal the nearest-rank quantiles, mean and
  max of its /methods/<label>/rel_error and bound_ratio, and memory_bytes its
  group's attribute; the two uniform seeds differ; '.' of 2.5% is 'p' in
  the label; with --no-bound-ratio p95_bound_ratio is NaN, the rest finite.
- held NP: every budgeted row keeps the budget's contract (core/budget.h:
  per stream, global over the ranks): memory_bytes <= S x the budget's bytes.
- plot: analysis/pareto.py writes a PNG (header, non-empty) and a CSV of
  the rows; --axis both (the demo's picture) writes one PNG twice as wide as
  high-ish (two panels side by side) and a CSV with read_tokens_per_query;
  its figure has two panels, x labels memory_bytes and
  read_tokens_per_query, each method's curve at the rows' medians of that
  column and exact's dashed line at exact's memory / reads; a file without
  the reads columns is refused with one line, nothing written.
- bad: bad --budgets entries and a budget= in --methods exit 2 with one
  "kvstream: error:" line and no results file."""
import math
import os
import shutil
import struct
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work, mode = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(work, exist_ok=True)
HERE = os.path.dirname(os.path.abspath(__file__))
BUDGETS = ["2.5%", "10%", "50%"]
FLOATS = ["p50_error", "p95_error", "mean_error", "max_error", "p95_bound_ratio"]
COLS = ["method", "budget", "seed", "label", "memory_bytes"] + FLOATS
checks = 0


def trace(np_):
    t = os.path.join(work, "trace.h5")
    r = run(mpi_cmd(np_, exe, "gen", "--kind", "clustered", "--clusters", "16", "--streams", "2", "--tokens", "8192",
                    "--dim", "16", "--queries", "48", "--seed", "7", "-o", t))
    if r.returncode:
        fail("gen: " + r.stderr)
    return t


def pareto(np_, t, out, *extra):
    r = run(mpi_cmd(np_, exe, "pareto", t, "--methods", "window,uniform", "--budgets", ",".join(BUDGETS),
                    "--seeds", "2", "--seed", "11", "-o", out, "-q", *extra), timeout=300)
    print(r.stdout)
    if r.returncode:
        fail("pareto exit %d: %s" % (r.returncode, r.stderr))
    with h5py.File(out, "r") as f:
        if "pareto" not in f:
            fail("no /pareto in " + out)
        g = f["pareto"]
        for c in COLS:
            if c not in g:
                fail("/pareto/%s missing" % c)
        cols = {c: g[c][...] for c in COLS}
        n = len(cols["method"])
        for c in COLS:
            if cols[c].shape != (n,):
                fail("/pareto/%s has shape %s, expected (%d,)" % (c, cols[c].shape, n))
        rows = []
        for i in range(n):
            r = {c: (cols[c][i].decode() if c in ("method", "budget", "label") else cols[c][i].item()) for c in COLS}
            grp = f["methods"].get(r["label"])
            if grp is None:
                fail("row %d: no group /methods/%s" % (i, r["label"]))
            r["rel"] = grp["rel_error"][...].ravel()
            r["bound"] = grp["bound_ratio"][...].ravel() if "bound_ratio" in grp else None
            r["attr_memory"] = int(grp.attrs["memory_bytes"])
            rows.append(r)
    return rows


def nearest_rank(x, q):
    s = np.sort(x[~np.isnan(x)])
    return float(s[max(1, math.ceil(q * len(s))) - 1])


def check_rows(np_):
    global checks
    t = trace(np_)
    rows = pareto(np_, t, os.path.join(work, "pareto.h5"))
    got = sorted((r["method"], r["budget"], r["seed"]) for r in rows)
    want = sorted([("exact", "none", -1)] + [("window", b, -1) for b in BUDGETS] +
                  [("uniform", b, s) for b in BUDGETS for s in (11, 12)])
    if got != want:
        fail("rows %s, expected %s" % (got, want))
    if rows[0]["method"] != "exact" or rows[0]["label"] != "exact" or rows[0]["p95_error"] != 0:
        fail("the first row is not the exact reference with error 0: %s" % rows[0])
    checks += 1
    for r in rows:
        for c in FLOATS:
            if not math.isfinite(r[c]):
                fail("%s: %s is %r" % (r["label"], c, r[c]))
    checks += 1
    mem = [r["memory_bytes"] for b in BUDGETS for r in rows if r["method"] == "window" and r["budget"] == b]
    if any(b < a for a, b in zip(mem, mem[1:])) or not mem[0] > 0:
        fail("window memory_bytes %s is not non-decreasing in budget %s" % (mem, BUDGETS))
    checks += 1
    for r in rows:
        x = r["rel"]
        want = {"p50_error": nearest_rank(x, 0.5), "p95_error": nearest_rank(x, 0.95), "mean_error": float(np.mean(x)),
                "max_error": float(np.max(x)), "p95_bound_ratio": nearest_rank(r["bound"], 0.95)}
        for c, v in want.items():
            if not abs(r[c] - v) <= 1e-12 * max(1.0, abs(v)):
                fail("%s: %s %r, from /methods: %r" % (r["label"], c, r[c], v))
        if r["memory_bytes"] != r["attr_memory"]:
            fail("%s: memory_bytes %d, attribute %d" % (r["label"], r["memory_bytes"], r["attr_memory"]))
    checks += 1
    u = {r["seed"]: r["rel"] for r in rows if r["method"] == "uniform" and r["budget"] == "10%"}
    if np.array_equal(u[11], u[12]):
        fail("uniform seeds 11 and 12 gave identical rel_error: seed= not applied")
    if not [r for r in rows if r["label"] == "window@2p5%#0" and r["budget"] == "2.5%"]:
        fail("no row labelled window@2p5%#0 with budget 2.5%")
    checks += 1
    nob = pareto(np_, t, os.path.join(work, "pareto-nob.h5"), "--no-bound-ratio")
    if len(nob) != len(rows) or not all(math.isnan(r["p95_bound_ratio"]) for r in nob):
        fail("--no-bound-ratio: p95_bound_ratio should be NaN in every row")
    if not all(math.isfinite(r[c]) for r in nob for c in FLOATS[:4]):
        fail("--no-bound-ratio: error statistics not finite")
    checks += 1


def check_held(np_):
    global checks
    t = trace(np_)
    rows = pareto(np_, t, os.path.join(work, "pareto.h5"))
    with h5py.File(t, "r") as f:
        S, n, d = f["keys"].shape
        dv = f["values"].shape[2]
    over = []
    for r in rows:
        if r["budget"] == "none":
            continue
        cap = S * math.floor(float(r["budget"].rstrip("%")) / 100 * n * (d + dv) * 4)
        print("%-8s %-5s %5d memory %9d  budget x S %9d  %.2f" % (r["method"], r["budget"], r["seed"],
                                                                r["memory_bytes"], cap, r["memory_bytes"] / cap))
        if r["memory_bytes"] > cap:
            over.append("%s holds %d > %d" % (r["label"], r["memory_bytes"], cap))
    if over:
        fail("%d ranks: budget exceeded: %s" % (np_, "; ".join(over)))
    checks += 1


def check_plot():
    global checks
    out = os.path.join(work, "pareto.h5")
    rows = pareto(1, trace(1), out)
    prefix = os.path.join(work, "plot")
    for ext in (".png", ".csv"):
        if os.path.exists(prefix + ext):
            os.remove(prefix + ext)
    r = run(["/usr/bin/python3", os.path.join(HERE, "..", "analysis", "pareto.py"), out, "-o", prefix])
    print(r.stdout)
    if r.returncode:
        fail("pareto.py: " + r.stderr)
    with open(prefix + ".png", "rb") as f:
        png = f.read()
    if len(png) < 1000 or not png.startswith(b"\x89PNG\r\n\x1a\n"):
        fail("%s.png is not a PNG (%d bytes)" % (prefix, len(png)))
    checks += 1
    lines = open(prefix + ".csv").read().splitlines()
    if lines[0].split(",")[:4] != ["method", "budget", "seed", "memory_bytes"] or len(lines) != len(rows) + 1:
        fail("CSV header %r, %d lines for %d rows" % (lines[0], len(lines), len(rows)))
    checks += 1
    check_both(out)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or not head.startswith(b"\x89PNG\r\n\x1a\n") or head[12:16] != b"IHDR":
        fail("%s is not a PNG" % path)
    return struct.unpack(">II", head[16:24])


def check_both(out):
    """--axis both: memory and reads panels side by side, from a file with the reads columns."""
    global checks
    pa = os.path.join(HERE, "..", "analysis", "pareto.py")
    prefix = os.path.join(work, "both")
    for ext in (".png", ".csv"):
        if os.path.exists(prefix + ext):
            os.remove(prefix + ext)
    r = run(["/usr/bin/python3", pa, out, "-o", prefix, "--axis", "both"])
    if r.returncode:
        fail("pareto.py --axis both: " + r.stderr)
    w, h = png_size(prefix + ".png")
    print("--axis both: %d x %d PNG" % (w, h))
    if w < 1.5 * h:
        fail("--axis both: %d x %d PNG is not two panels side by side" % (w, h))
    header = open(prefix + ".csv").read().splitlines()[0].split(",")
    if "read_tokens_per_query" not in header:
        fail("--axis both: CSV header %r lacks read_tokens_per_query" % header)
    checks += 1
    # the figure itself: two panels, each method at the rows' medians of its x column
    sys.dont_write_bytecode = True  # no __pycache__ in analysis/
    sys.path.insert(0, os.path.join(HERE, "..", "analysis"))
    import pareto as pa_mod  # noqa: E402
    rows = pa_mod.load(out)  # with the reads columns
    fig = pa_mod.figure(rows, "p50", "t", ("memory", "reads"))
    axs = fig.axes
    if len(axs) != 2:
        fail("--axis both: %d panels, expected 2" % len(axs))
    # the memory panel in % of exact's memory (exact at 100), the reads panel in tokens
    ex_mem = [x["memory_bytes"] for x in rows if x["method"] == "exact"][0]
    for ax, col, name, scale in zip(axs, ("memory_bytes", "read_tokens_per_query"),
                                    ("% of exact's", "read_tokens_per_query"), (100.0 / ex_mem, 1.0)):
        if name not in ax.get_xlabel():
            fail("panel x label %r does not say %s" % (ax.get_xlabel(), name))
        for m in ("window", "uniform"):
            want = sorted(scale * float(np.median([x[col] for x in rows if x["method"] == m and x["budget"] == b]))
                          for b in BUDGETS)
            got = [l for l in ax.get_lines() if l.get_label() == m]
            if len(got) != 1 or not np.allclose(sorted(got[0].get_xdata()), want, rtol=1e-12):
                fail("%s panel: %s at x %s, expected the rows' medians %s" % (
                    col, m, [list(l.get_xdata()) for l in got], want))
        ex = scale * [x[col] for x in rows if x["method"] == "exact"][0]
        if not any(l.get_linestyle() == "--" and np.allclose(l.get_xdata(), ex) for l in ax.get_lines()):
            fail("%s panel: no dashed line at exact's %g" % (col, ex))
    if [x["read_tokens_per_query"] for x in rows if x["method"] == "window"] == \
            [x["memory_bytes"] for x in rows if x["method"] == "window"]:
        fail("reads equal memory bytes: the panels would be the same")
    checks += 1
    # a file without the reads columns: one line, non-zero exit, no PNG
    old = os.path.join(work, "noreads.h5")
    shutil.copyfile(out, old)
    with h5py.File(old, "r+") as f:
        for c in ("read_tokens_per_query", "read_bytes_per_query"):
            if c in f["pareto"]:
                del f["pareto"][c]
    for ext in (".png", ".csv"):
        os.remove(prefix + ext)
    r = run(["/usr/bin/python3", pa, old, "-o", prefix, "--axis", "both"])
    if r.returncode == 0 or "read_tokens_per_query" not in r.stderr or \
            any(os.path.exists(prefix + ext) for ext in (".png", ".csv")):
        fail("--axis both on a file without reads: exit %d, stderr %r" % (r.returncode, r.stderr))
    checks += 1


def check_bad():
    global checks
    t = trace(2)
    cases = [("window", "10%,abc", "budget 'abc'"), ("window", "10%,0%", "budget '0%'"),
             ("window", "150%", "more than 100%"), ("window", "10%,,50%", "budget ''"),
             ("window", "10%,10%", "given twice"), ("window:budget=5%", "10%", "come from --budgets")]
    for meth, budgets, msg in cases:
        out = os.path.join(work, "bad.h5")
        if os.path.exists(out):
            os.remove(out)
        r = run(mpi_cmd(2, exe, "pareto", t, "--methods", meth, "--budgets", budgets, "-o", out))
        lines = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith("kvstream")]
        print("%s --budgets %s: exit %d: %s" % (meth, budgets, r.returncode, lines))
        if r.returncode != 2:
            fail("--budgets %s: exit %d, expected 2" % (budgets, r.returncode))
        if len(lines) != 1 or not lines[0].startswith("kvstream: error: pareto:") or msg not in lines[0] or \
                lines[0].count("(rank") > 1:
            fail("--budgets %s: expected one 'kvstream: error: pareto: ...%s...' line, got %s" % (budgets, msg, lines))
        if os.path.exists(out):
            fail("--budgets %s: a results file was written" % budgets)
        checks += 1


if mode == "rows":
    check_rows(int(sys.argv[4]))
elif mode == "held":
    check_held(int(sys.argv[4]))
elif mode == "plot":
    check_plot()
else:
    check_bad()
print("check_pareto %s: %d passed, 0 failed" % (mode, checks))
