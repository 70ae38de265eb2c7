#!/usr/bin/python3
"""Strong / weak scaling tables and plot from a directory of kvstream results files.

    /usr/bin/python3 analysis/scaling.py DIR|RESULTS.h5 ... [--mode auto|strong|weak]
                     [--time wall|methods] [-o PREFIX]

Groups the results files by (ranks, threads) (root attributes of each file;
repeats of a point: the median time is used). Time is `wall_seconds` (whole
replay on rank 0; default) or, with --time methods, the sum over methods of
ingest_seconds + query_seconds. cores = ranks * threads; the baseline is the
point with the fewest cores (then the fewest ranks).

  strong (one trace): speedup = T_base / T, efficiency = speedup / (cores / cores_base)
  weak (work per core fixed, tokens grow with cores):
        efficiency = T_base / T, scaled speedup = efficiency * cores / cores_base

--mode auto picks weak when the files' token counts differ, else strong.
Strong mode refuses files of different traces (tokens, streams, d, queries).

Writes PREFIX.md (Markdown table), PREFIX.csv and PREFIX.png (time and
efficiency against cores, one line per threads-per-rank), default PREFIX
DIR/scaling (first input). Columns:

    ranks, threads, cores, runs, tokens, time_s, speedup, efficiency

Run with Debian's /usr/bin/python3 (numpy, h5py, matplotlib; Agg backend).
"""
import argparse
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvresults as kv  # noqa: E402

HEADER = ["ranks", "threads", "cores", "runs", "tokens", "time_s", "speedup", "efficiency"]


def point_time(r, which):
    return r.wall_seconds if which == "wall" else r.method_seconds()


def scaling_table(results, mode="auto", which="wall"):
    """(mode, rows) with rows as in HEADER, sorted by cores then ranks."""
    if not results:
        raise ValueError("no results files")
    toks = {r.tokens for r in results}
    if mode == "auto":
        mode = "weak" if len(toks) > 1 else "strong"
    if mode == "strong":
        shapes = {(r.streams, r.tokens, r.queries, r.d, r.dv) for r in results}
        if len(shapes) > 1:
            raise ValueError("strong scaling needs one trace, found shapes (S, n, m, d, dv) %s" % sorted(shapes))
    pts = {}
    for r in results:
        pts.setdefault((r.ranks, r.threads), []).append(r)
    for (ra, th), rs in pts.items():
        if len({x.tokens for x in rs}) > 1:
            raise ValueError("point %dx%d: results of different token counts" % (ra, th))
    keys = sorted(pts, key=lambda k: (k[0] * k[1], k[0]))
    base = keys[0]
    tb = float(np.median([point_time(r, which) for r in pts[base]]))
    cb = base[0] * base[1]
    rows = []
    for k in keys:
        t = float(np.median([point_time(r, which) for r in pts[k]]))
        c = k[0] * k[1]
        if mode == "strong":
            sp = tb / t
            eff = sp / (c / cb)
        else:
            eff = tb / t
            sp = eff * c / cb
        rows.append([k[0], k[1], c, len(pts[k]), pts[k][0].tokens, t, sp, eff])
    return mode, rows


def plot(rows, mode, png, which):
    plt = kv.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    cb, tb = rows[0][2], rows[0][5]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, th in enumerate(sorted({r[1] for r in rows})):
        rs = sorted((r for r in rows if r[1] == th), key=lambda r: r[2])
        c = [r[2] for r in rs]
        col = colors[i % len(colors)]
        a1.plot(c, [r[5] for r in rs], "-o", color=col, label="%d thread%s/rank" % (th, "" if th == 1 else "s"))
        a2.plot(c, [r[7] for r in rs], "-o", color=col, label="%d thread%s/rank" % (th, "" if th == 1 else "s"))
        for r in rs:
            a1.annotate("%dx%d" % (r[0], r[1]), (r[2], r[5]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    cs = np.array(sorted({r[2] for r in rows}), dtype=float)
    ideal = tb * cb / cs if mode == "strong" else np.full_like(cs, tb)
    a1.plot(cs, ideal, "k--", lw=1, label="ideal")
    a2.axhline(1.0, color="k", ls="--", lw=1)
    a1.set_xscale("log", base=2)
    a2.set_xscale("log", base=2)
    if mode == "strong":
        a1.set_yscale("log")
    a1.set_xlabel("cores (ranks x threads)")
    a2.set_xlabel("cores (ranks x threads)")
    a1.set_ylabel("time [s] (%s)" % ("wall_seconds" if which == "wall" else "ingest + query"))
    a2.set_ylabel("parallel efficiency")
    a2.set_ylim(0, max(1.1, max(r[7] for r in rows) * 1.1))
    a1.set_title("%s scaling: time" % mode)
    a2.set_title("%s scaling: efficiency" % mode)
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", help="results files or directories of them")
    ap.add_argument("--mode", choices=("auto", "strong", "weak"), default="auto")
    ap.add_argument("--time", choices=("wall", "methods"), default="wall")
    ap.add_argument("-o", "--out", default=None, help="output prefix (default DIR/scaling)")
    a = ap.parse_args(argv)
    out = a.out
    if out is None:
        d = a.inputs[0] if os.path.isdir(a.inputs[0]) else os.path.dirname(a.inputs[0]) or "."
        out = os.path.join(d, "scaling")
    try:
        results = kv.load_results(a.inputs, arrays=False, skip_other=False)
        mode, rows = scaling_table(results, a.mode, a.time)
    except (OSError, ValueError) as e:
        print("scaling: %s" % e, file=sys.stderr)
        return 2
    kv.write_csv(out + ".csv", HEADER, rows)
    md = "# %s scaling (time: %s; baseline %dx%d)\n\n" % (
        mode, "wall_seconds" if a.time == "wall" else "ingest+query seconds", rows[0][0], rows[0][1])
    md += kv.markdown_table(HEADER, rows)
    with open(out + ".md", "w") as f:
        f.write(md)
    plot(rows, mode, out + ".png", a.time)
    sys.stdout.write(md)
    print("wrote %s.md, %s.csv, %s.png" % (out, out, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
