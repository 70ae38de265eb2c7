#!/usr/bin/python3
"""Tests of the analysis scripts on results the test makes itself.

usage: test_analysis.py KVSTREAM WORKDIR error_memory|scaling|sweep|heads

Run with /usr/bin/python3 (numpy, h5py, matplotlib); PYTHONPATH must hold
tests/ (kvtest). The analysis scripts are found next to this file
(../analysis).

error_memory: a small trace replayed with 2 ranks (exact and 6 baselines)
  and with 1 rank (subgen), analysis/plot_error_memory.py on a file and a
  directory (holding a trace too, which must be skipped):
  - one CSV row per (file, method), none missing, none extra;
  - memory_bytes, peak_memory_bytes, kept_tokens, clusters, tokens, ranks
    equal the HDF5 attributes; p50/p95/mean/max equal numpy's on rel_error
    (rel. 1e-12);
  - exact's errors are 0 and every compressed method holds less memory;
  - the PNG is a real plot; a trace named as input is refused (exit 2).
scaling: the trace replayed at 1x1, 2x1 (twice) and 1x2 ranks x threads,
  analysis/scaling.py on the directory (strong, both time measures) and on
  traces whose size grows with the cores (weak):
  - CSV and Markdown rows = (ranks, threads, cores, runs, tokens, time,
    speedup, efficiency) recomputed from wall_seconds (or ingest+query) in
    the files, median over repeats (CSV rel. 1e-12, Markdown to its 4
    digits); baseline 1x1 has speedup = efficiency = 1;
  - auto mode picks strong/weak correctly; strong on mixed traces exits 2;
  - the PNG is a real plot.
sweep: a /sweep table written with h5py (two kinds, two d, an unmet row; one
  file without param/met), and, when `kvstream help` lists `sweep`, a real
  small sweep; analysis/plot_sweep.py on them:
  - CSV rows = the HDF5 rows (every column, eps), sorted by kind, method, d, n;
  - the PNG is a real plot with one panel per kind.
heads: a 128-token trace recorded from stories260K (5 layers x 4 kv heads),
  replayed at 2 ranks with window and h2o; analysis/heads.py on it:
  - both PNGs are real plots;
  - heads.csv holds one cell per (method, stream), equal to the file's
    per_stream/rel_error_p50, layer, kv_head (= s // n_kv_heads, s % n_kv_heads
    of the trace) and the method's bits_per_token;
  - a trace named as input is refused in one line (exit 2).
"""
import csv
import os
import struct
import subprocess
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, mpi_env

exe, work, which = sys.argv[1], sys.argv[2], sys.argv[3]
HERE = os.path.dirname(os.path.abspath(__file__))
ANALYSIS = os.path.join(os.path.dirname(HERE), "analysis")
os.makedirs(work, exist_ok=True)
checks = 0


def ok(msg):
    global checks
    checks += 1
    print("ok: " + msg)


def path(*a):
    return os.path.join(work, *a)


def kv(np_, *args, threads=1, timeout=300):
    env = dict(mpi_env(), OMP_NUM_THREADS=str(threads))
    cmd = mpi_cmd(np_, exe, *args)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        fail("timed out: " + " ".join(cmd))
    if r.returncode:
        fail("%s failed (%d): %s" % (" ".join(cmd), r.returncode, r.stderr))
    return r


def script(name, *args, expect=0):
    cmd = ["/usr/bin/python3", os.path.join(ANALYSIS, name)] + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != expect:
        fail("%s: exit %d (expected %d)\nstdout: %s\nstderr: %s" % (" ".join(cmd), r.returncode, expect, r.stdout,
                                                                     r.stderr))
    return r


def read_csv(p):
    with open(p, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        fail("%s is empty" % p)
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def close(a, b, rtol=1e-12, atol=0.0):
    a, b = float(a), float(b)
    if np.isnan(a) and np.isnan(b):
        return True
    return abs(a - b) <= atol + rtol * max(abs(a), abs(b))


def check_png(p, min_colored=200, min_white=0.5):
    """A valid PNG of a plausible size, with axes/text (dark pixels), colored
    lines or markers, and mostly white background (a heatmap: at least
    min_white of it): not blank, not noise."""
    with open(p, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        fail("%s is not a PNG" % p)
    w, h = struct.unpack(">II", head[16:24])
    if w < 400 or h < 300:
        fail("%s is only %dx%d" % (p, w, h))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    img = mpimg.imread(p)
    if img.shape[:2] != (h, w):
        fail("%s: decoded shape %s, header %dx%d" % (p, img.shape, w, h))
    rgb = (img[..., :3] * 255).round().astype(np.int16).reshape(-1, 3)
    white = np.all(rgb > 245, axis=1).mean()
    dark = np.all(rgb < 80, axis=1).sum()
    colored = ((rgb.max(axis=1) - rgb.min(axis=1)) > 80).sum()
    ncol = len(np.unique(rgb, axis=0))
    if not (min_white < white < 0.995) or dark < 500 or colored < min_colored or ncol < 16:
        fail("%s does not look like a plot: white %.3f, dark px %d, colored px %d, colors %d" %
             (p, white, dark, colored, ncol))
    ok("%s: %dx%d PNG, %.1f%% white, %d colored px, %d colors" % (os.path.basename(p), w, h, 100 * white, colored, ncol))


def md_rows(p):
    """The rows of the Markdown table in file p, as lists of cells."""
    rows = []
    with open(p) as f:
        for line in f:
            line = line.strip()
            if line.startswith("|") and not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[0], rows[1:]


def gen(out, tokens, kind="clustered", np_=1, queries=48, streams=2, dim=16):
    extra = ["--clusters", "8", "--spread", "0.3"] if kind == "clustered" else []
    kv(np_, "gen", "--kind", kind, "--streams", str(streams), "--tokens", str(tokens), "--dim", str(dim),
       "--queries", str(queries), "--chunk", "512", "--seed", "7", *extra, "-o", out)


# ---------------------------------------------------------------------------
def test_error_memory():
    trace = path("em-trace.h5")
    gen(trace, 3000)
    r1 = path("em-np2.h5")
    kv(2, "replay", trace, "--quiet", "-o", r1, "--methods",
       "exact,window:W=64,window:W=512,uniform:tokens=128,uniform:tokens=1024,h2o:tokens=256,recent=32,"
       "sinks:S=4,W=128")
    sub = path("em-dir")
    os.makedirs(sub, exist_ok=True)
    r2 = os.path.join(sub, "em-np1.h5")
    kv(1, "replay", trace, "--quiet", "-o", r2, "--methods", "subgen:delta=1.5,t=8,s=32,name=sg")
    # a trace in the directory: skipped, not an error
    gen(os.path.join(sub, "not-results.h5"), 500)
    out = path("em")
    r = script("plot_error_memory.py", r1, sub, "-o", out)
    if "exact" not in r.stdout or "window:W=64" not in r.stdout:
        fail("table not printed: " + r.stdout)
    header, rows = read_csv(out + ".csv")
    want = ["file", "label", "method", "spec", "memory_bytes", "peak_memory_bytes", "kept_tokens", "clusters",
            "p50_error", "p95_error", "mean_error", "max_error", "tokens", "ranks"]
    if header != want:
        fail("CSV header %s" % header)
    got = {(os.path.basename(x["file"]), x["label"]): x for x in rows}
    if len(got) != len(rows):
        fail("duplicate CSV rows")
    expected = set()
    n_num = 0
    for f in (r1, r2):
        with h5py.File(f, "r") as h:
            exact_mem = int(h["methods/exact"].attrs["memory_bytes"])
            for label in h["methods"]:
                g = h["methods"][label]
                key = (os.path.basename(f), label)
                expected.add(key)
                if key not in got:
                    fail("CSV lacks %s" % (key,))
                row = got[key]
                e = g["rel_error"][...].astype(np.float64).ravel()
                p50, p95 = np.percentile(e, [50, 95])
                for col, v in (("p50_error", p50), ("p95_error", p95), ("mean_error", e.mean()), ("max_error", e.max())):
                    if not close(row[col], v):
                        fail("%s %s: CSV %s, from HDF5 %r" % (key, col, row[col], v))
                    n_num += 1
                for col in ("memory_bytes", "peak_memory_bytes", "kept_tokens", "clusters"):
                    if int(row[col]) != int(g.attrs[col]):
                        fail("%s %s: CSV %s, HDF5 %s" % (key, col, row[col], g.attrs[col]))
                    n_num += 1
                if int(row["tokens"]) != int(h.attrs["tokens"]) or int(row["ranks"]) != int(h.attrs["ranks"]):
                    fail("%s: tokens/ranks" % (key,))
                if row["spec"] != g.attrs["spec"].decode() or row["method"] != g.attrs["method"].decode():
                    fail("%s: spec/method" % (key,))
                if label == "exact":
                    if float(row["p95_error"]) != 0 or float(row["max_error"]) != 0:
                        fail("exact's error is not 0 in the CSV")
                elif not int(row["memory_bytes"]) < exact_mem:
                    fail("%s holds %s bytes, not less than exact's %d" % (key, row["memory_bytes"], exact_mem))
                elif not float(row["p95_error"]) > 0:
                    fail("%s: p95 error 0 on a compressed method (trace too easy?)" % (key,))
    if set(got) != expected:
        fail("CSV has rows not in the results files: %s" % (set(got) - expected))
    ok("error/memory CSV: %d rows, %d numbers equal to the HDF5 files" % (len(rows), n_num))
    check_png(out + ".png")
    r = script("plot_error_memory.py", trace, "-o", path("bad"), expect=2)
    if "not a kvstream results file" not in r.stderr:
        fail("trace as input: " + r.stderr)
    ok("a trace named as input is refused: " + r.stderr.strip())


# ---------------------------------------------------------------------------
def expect_scaling(files, mode, which):
    pts = {}
    for f in files:
        with h5py.File(f, "r") as h:
            a = h.attrs
            t = float(a["wall_seconds"]) if which == "wall" else sum(
                float(h["methods"][m].attrs["ingest_seconds"]) + float(h["methods"][m].attrs["query_seconds"])
                for m in h["methods"])
            pts.setdefault((int(a["ranks"]), int(a["threads"])), []).append((t, int(a["tokens"])))
    keys = sorted(pts, key=lambda k: (k[0] * k[1], k[0]))
    tb, cb = float(np.median([t for t, _ in pts[keys[0]]])), keys[0][0] * keys[0][1]
    rows = []
    for k in keys:
        t, c = float(np.median([t for t, _ in pts[k]])), k[0] * k[1]
        if mode == "strong":
            sp = tb / t
            eff = sp / (c / cb)
        else:
            eff = tb / t
            sp = eff * c / cb
        rows.append((k[0], k[1], c, len(pts[k]), pts[k][0][1], t, sp, eff))
    return rows


def check_scaling_out(prefix, files, mode, which):
    want = expect_scaling(files, mode, which)
    header, rows = read_csv(prefix + ".csv")
    H = ["ranks", "threads", "cores", "runs", "tokens", "time_s", "speedup", "efficiency"]
    if header != H:
        fail("scaling CSV header %s" % header)
    if len(rows) != len(want):
        fail("%s.csv: %d rows, expected %d" % (prefix, len(rows), len(want)))
    for row, w in zip(rows, want):
        for i, col in enumerate(H):
            if i < 5:
                if int(row[col]) != w[i]:
                    fail("%s.csv %s: %s, expected %s" % (prefix, col, row[col], w[i]))
            elif not close(row[col], w[i]):
                fail("%s.csv %s at %dx%d: %s, expected %r" % (prefix, col, w[0], w[1], row[col], w[i]))
    if not (close(rows[0]["speedup"], 1) and close(rows[0]["efficiency"], 1)):
        fail("baseline speedup/efficiency not 1")
    mh, mrows = md_rows(prefix + ".md")
    if mh != H or len(mrows) != len(want):
        fail("%s.md: header %s, %d rows" % (prefix, mh, len(mrows)))
    for row, w in zip(mrows, want):
        for i in range(len(H)):
            if i < 5 and int(row[i]) != w[i] or i >= 5 and not close(row[i], w[i], rtol=6e-4):
                fail("%s.md %s: %s, expected %r" % (prefix, H[i], row[i], w[i]))
    with open(prefix + ".md") as f:
        if "# %s scaling" % mode not in f.read():
            fail("%s.md does not say %s scaling" % (prefix, mode))
    ok("%s scaling (%s time): %d points, CSV and Markdown match the HDF5 files" % (mode, which, len(want)))


def test_scaling():
    d = path("strong")
    os.makedirs(d, exist_ok=True)
    trace = os.path.join(d, "trace.h5")  # in the directory on purpose: skipped
    gen(trace, 20000, queries=96, dim=32)
    files = []
    for (r, t, rep) in ((1, 1, 1), (2, 1, 1), (2, 1, 2), (1, 2, 1)):
        f = os.path.join(d, "r%d_t%d_rep%d.h5" % (r, t, rep))
        kv(r, "replay", trace, "--methods", "exact,window:W=256", "--quiet", "-o", f, threads=t)
        with h5py.File(f, "r") as h:
            if (int(h.attrs["ranks"]), int(h.attrs["threads"])) != (r, t):
                fail("replay ran with %s ranks x %s threads, asked %dx%d" % (h.attrs["ranks"], h.attrs["threads"], r, t))
        files.append(f)
    r = script("scaling.py", d)
    if "strong scaling" not in r.stdout:
        fail("auto mode did not pick strong: " + r.stdout)
    check_scaling_out(os.path.join(d, "scaling"), files, "strong", "wall")
    script("scaling.py", d, "--time", "methods", "--mode", "strong", "-o", path("strong-methods"))
    check_scaling_out(path("strong-methods"), files, "strong", "methods")
    check_png(os.path.join(d, "scaling.png"))

    w = path("weak")
    os.makedirs(w, exist_ok=True)
    wfiles = []
    for (r, t) in ((1, 1), (2, 1), (1, 2)):
        tr = path("weak-trace-%d.h5" % (r * t))
        if not os.path.exists(tr):
            gen(tr, 8000 * r * t, queries=64, dim=32)
        f = os.path.join(w, "r%d_t%d.h5" % (r, t))
        kv(r, "replay", tr, "--methods", "exact", "--quiet", "-o", f, threads=t)
        wfiles.append(f)
    r = script("scaling.py", w, "-o", path("weak-out"))
    if "weak scaling" not in r.stdout:
        fail("auto mode did not pick weak for growing traces: " + r.stdout)
    check_scaling_out(path("weak-out"), wfiles, "weak", "wall")
    check_png(path("weak-out.png"))
    r = script("scaling.py", w, "--mode", "strong", "-o", path("bad"), expect=2)
    if "one trace" not in r.stderr:
        fail("strong mode on different traces: " + r.stderr)
    ok("strong mode on different traces refused: " + r.stderr.strip())


# ---------------------------------------------------------------------------
def write_sweep(p, rows, eps, with_param=True):
    """rows: (kind, n, d, method, param, budget_bytes, p95_error, met)"""
    with h5py.File(p, "w") as f:
        f.attrs["eps"] = eps
        g = f.create_group("sweep")
        st = h5py.string_dtype()
        g.create_dataset("kind", data=np.array([r[0] for r in rows], dtype=object), dtype=st)
        g.create_dataset("n", data=np.array([r[1] for r in rows], dtype=np.int64))
        g.create_dataset("d", data=np.array([r[2] for r in rows], dtype=np.int64))
        g.create_dataset("method", data=np.array([r[3] for r in rows], dtype=object), dtype=st)
        g.create_dataset("budget_bytes", data=np.array([r[5] for r in rows], dtype=np.int64))
        g.create_dataset("p95_error", data=np.array([r[6] for r in rows], dtype=np.float64))
        if with_param:
            g.create_dataset("param", data=np.array([r[4] for r in rows], dtype=np.int64))
            g.create_dataset("met", data=np.array([r[7] for r in rows], dtype=np.int64))


def check_sweep_csv(out, files):
    want = []
    for f in files:
        with h5py.File(f, "r") as h:
            g, eps = h["sweep"], float(h.attrs["eps"])
            L = len(g["n"])
            for i in range(L):
                dec = lambda x: x.decode() if isinstance(x, bytes) else str(x)  # noqa: E731
                want.append((dec(g["kind"][i]), dec(g["method"][i]), int(g["d"][i]), int(g["n"][i]),
                             str(int(g["param"][i])) if "param" in g else "", int(g["budget_bytes"][i]),
                             float(g["p95_error"][i]), str(int(g["met"][i])) if "met" in g else "", eps, f))
    want.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    header, rows = read_csv(out + ".csv")
    if header != ["kind", "method", "d", "n", "param", "budget_bytes", "p95_error", "met", "eps", "file"]:
        fail("sweep CSV header %s" % header)
    if len(rows) != len(want):
        fail("sweep CSV: %d rows, expected %d" % (len(rows), len(want)))
    for row, w in zip(rows, want):
        got = (row["kind"], row["method"], int(row["d"]), int(row["n"]), row["param"], int(row["budget_bytes"]))
        if got != w[:6] or row["met"] != w[7] or row["file"] != w[9]:
            fail("sweep CSV row %s, expected %s" % (row, w))
        if not close(row["p95_error"], w[6]) or not close(row["eps"], w[8]):
            fail("sweep CSV numbers %s, expected %s" % (row, w))
    ok("sweep CSV: %d rows equal to the /sweep tables of %d files, sorted" % (len(rows), len(files)))


def test_sweep():
    eps = 0.25
    rows = []
    for n in (256, 1024, 4096):
        for d in (3, 40):
            # jl: memory linear in n; sphere: flat
            rows.append(("jl", n, d, "window:W=@", n // 2, n * d * 4, 0.2, 1))
            rows.append(("jl", n, d, "subgen:delta=1,t=8,s=@", n // 4, n * d * 3, 0.21, 1))
            rows.append(("sphere", n, d, "subgen:delta=1,t=8,s=@", 64, 5000 + d * 100 + n // 64, 0.24, 1))
            rows.append(("sphere", n, d, "window:W=@", n, n * d * 8, 0.6 if n == 4096 else 0.2, 0 if n == 4096 else 1))
    a = path("sweep-a.h5")
    write_sweep(a, rows[::2], eps)
    b = path("sweep-b.h5")
    write_sweep(b, rows[1::2], eps, with_param=False)
    files = [a, b]
    help_text = subprocess.run([exe, "help"], capture_output=True, text=True, env=mpi_env()).stdout
    if any(line.startswith("  sweep ") for line in help_text.splitlines()):
        for kind, dd in (("jl", "40"), ("sphere", "3")):
            out = path("real-%s.h5" % kind)
            wd = path("sweep-work")
            os.makedirs(wd, exist_ok=True)
            kv(2, "sweep", "--kind", kind, "--n", "256,1024", "--d", dd, "--methods", "window:W=@,uniform:tokens=@",
               "--eps", "0.3", "--queries", "16", "--seed", "2", "--workdir", wd, "-o", out, timeout=600)
            files.append(out)
        ok("kvstream sweep available: real sweeps (jl, sphere) added")
    else:
        print("note: kvstream sweep not in `kvstream help`: synthetic /sweep files only")
    out = path("sweep-plot")
    r = script("plot_sweep.py", *files, "-o", out)
    if "jl" not in r.stdout or "sphere" not in r.stdout:
        fail("table not printed: " + r.stdout)
    check_sweep_csv(out, files)
    check_png(out + ".png")
    r = script("plot_sweep.py", path("sweep-a.h5"), "-o", path("sweep-a"))
    check_sweep_csv(path("sweep-a"), [path("sweep-a.h5")])
    with h5py.File(path("no-sweep.h5"), "w") as f:
        f.attrs["eps"] = 0.1
    r = script("plot_sweep.py", path("no-sweep.h5"), "-o", path("bad"), expect=2)
    if "no /sweep group" not in r.stderr:
        fail("file without /sweep: " + r.stderr)
    ok("a file without /sweep is refused")


# ---------------------------------------------------------------------------
def test_heads():
    model = os.path.join(os.path.dirname(HERE), "tests", "data", "stories260K.bin")
    trace = path("heads-trace.h5")
    kv(1, "record", "--model", model, "--tokens", "128", "-o", trace)
    res = path("heads-res.h5")
    kv(2, "replay", trace, "--methods", "window:W=32,name=window,h2o:tokens=32,name=h2o", "-q", "-o", res)
    out = path("heads")
    r = script("heads.py", res, "-o", out)
    if "window" not in open(out + ".csv").read():
        fail("heads.csv lacks window: " + r.stdout)
    check_png(out + "_heatmap.png", min_white=0.2)  # the cells fill most of it
    check_png(out + "_memory.png", min_colored=50)
    hdr, rows = read_csv(out + ".csv")
    with h5py.File(trace, "r") as t:
        H = int(t.attrs["n_kv_heads"])
    with h5py.File(res, "r") as f:
        S = int(f.attrs["streams"])
        want = {}
        for g in ("window", "h2o"):
            ps = f["methods"][g]["per_stream"]
            for s in range(S):
                want[(g, s)] = (float(ps["rel_error_p50"][s]), int(ps["layer"][s]), int(ps["kv_head"][s]),
                                float(f["methods"][g].attrs["bits_per_token"]))
    got = {(x["label"], int(x["stream"])): x for x in rows}
    if set(got) != set(want):
        fail("heads.csv cells %s, expected (window, h2o) x %d streams" % (sorted(got), S))
    for key, (p50, layer, head, bpt) in want.items():
        x = got[key]
        if not (close(x["value"], p50) and int(x["layer"]) == layer == key[1] // H and
                int(x["kv_head"]) == head == key[1] % H and close(x["bits_per_token"], bpt)):
            fail("heads.csv %s: %s, file: p50 %r layer %d head %d bits %r" % (key, x, p50, layer, head, bpt))
    ok("heads.csv: %d cells = per_stream/rel_error_p50 with (layer, kv_head) = (s // %d, s %% %d)" % (len(rows), H, H))
    r = script("heads.py", trace, "-o", path("bad"), expect=2)
    if "heads.py:" not in r.stderr or len(r.stderr.strip().splitlines()) != 1:
        fail("a trace given as results: " + r.stderr)
    ok("a trace given as results is refused in one line, exit 2")


{"error_memory": test_error_memory, "scaling": test_scaling, "sweep": test_sweep, "heads": test_heads}[which]()
print("test_analysis %s: %d passed, 0 failed" % (which, checks))
