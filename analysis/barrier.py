#!/usr/bin/python3
"""The barrier figure: least memory for error <= eps against n, per instance and d.

    /usr/bin/python3 analysis/barrier.py SWEEP.h5 ... [-o PREFIX]

Reads `kvstream sweep` files (the /sweep table; scripts/run-barrier.sh writes
them) and writes PREFIX.png (default barrier.png): one log-log panel per
(kind, d) with, per method family (the text before ':' or the name= label's
text before '-', so subgen-d01 and subgen-l2 are one family "subgen"), the
least budget_bytes over its templates that met eps; hollow markers where that
answer is "keep everything" (keeps_all: at least exact's memory), the least
over all methods as a thick grey line, exact's memory n (d + dv) 4 bytes as
the "n d" line and, on packing, N (d + dv) 4 bytes (every point once) as the
"N d" plateau.  Also PREFIX.csv with the least-squares slope of log memory
against log n for every (kind, d, family) and for the least over methods:

    kind, d, series, n_lo, n_hi, points, slope, all_met, keeps_all_rows

printed as a table.  A series' slope uses only the n where it met eps.
Run with Debian's /usr/bin/python3 (numpy, h5py, matplotlib; Agg backend).
"""
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvresults as kv  # noqa: E402

HEADER = ["kind", "d", "series", "n_lo", "n_hi", "points", "slope", "all_met", "keeps_all_rows"]


def family(method):
    head = method.split(":")[0]
    return head.split("-")[0] if ":" not in method else head


def load(paths):
    rows = []
    for p in paths:
        cols, eps = kv.load_sweep(p)
        for k in ("met", "exact_bytes", "keeps_all", "points"):
            if k not in cols:
                raise ValueError("%s: /sweep/%s missing (a sweep from before the lower-bound instances?)" % (p, k))
        for i in range(len(cols["n"])):
            rows.append(dict(kind=cols["kind"][i], method=cols["method"][i], fam=family(cols["method"][i]),
                             n=int(cols["n"][i]), d=int(cols["d"][i]), mem=int(cols["budget_bytes"][i]),
                             met=int(cols["met"][i]), all=int(cols["keeps_all"][i]),
                             exact=int(cols["exact_bytes"][i]), N=int(cols["points"][i]), eps=eps))
    return rows


def best(rows):
    """n -> (least memory among rows that met eps, keeps_all of that row); n with none met -> None."""
    out = {}
    for n in sorted({r["n"] for r in rows}):
        ok = [r for r in rows if r["n"] == n and r["met"]]
        out[n] = min(((r["mem"], r["all"]) for r in ok), default=None)
    return out


def slope(series):
    pts = [(n, v[0]) for n, v in sorted(series.items()) if v is not None]
    if len(pts) < 2:
        return pts, float("nan")
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return pts, float(np.polyfit(x, y, 1)[0])


def analyse(rows):
    panels = sorted({(r["kind"], r["d"]) for r in rows})
    table = []
    for kind, d in panels:
        rk = [r for r in rows if r["kind"] == kind and r["d"] == d]
        series = [(f, best([r for r in rk if r["fam"] == f])) for f in sorted({r["fam"] for r in rk})]
        series.append(("least over methods", best(rk)))
        for name, s in series:
            pts, sl = slope(s)
            table.append([kind, d, name, pts[0][0] if pts else "", pts[-1][0] if pts else "", len(pts),
                          round(sl, 3) if sl == sl else "nan", int(all(v is not None for v in s.values())),
                          sum(1 for v in s.values() if v is not None and v[1])])
    return panels, table


def plot(rows, panels, png):
    plt = kv.pyplot()
    cols = min(len(panels), 2)
    nrow = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrow, cols, figsize=(5.6 * cols, 4.4 * nrow), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fams = sorted({r["fam"] for r in rows})
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (kind, d) in zip(axes.flat, panels):
        rk = [r for r in rows if r["kind"] == kind and r["d"] == d]
        ns = np.array(sorted({r["n"] for r in rk}), dtype=float)
        for fi, f in enumerate(fams):
            s = best([r for r in rk if r["fam"] == f])
            pts = [(n, v) for n, v in s.items() if v is not None]
            if not pts:
                continue
            c = colors[fi % len(colors)]
            ax.plot([p[0] for p in pts], [p[1][0] for p in pts], "-", color=c, lw=1, label=f)
            for n, (m, a) in pts:
                ax.plot([n], [m], "o", color=c, mfc="none" if a else c, ms=5)
            miss = [n for n, v in s.items() if v is None]
            if miss:
                y = [max(r["mem"] for r in rk if r["n"] == n and r["fam"] == f) for n in miss]
                ax.scatter(miss, y, marker="x", color=c, s=30)
        s = best(rk)
        pts = [(n, v[0]) for n, v in s.items() if v is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color="0.3", lw=4, alpha=0.3,
                    label="least over methods")
        ex = [min(r["exact"] for r in rk if r["n"] == n) for n in ns]
        ax.plot(ns, ex, ":", color="k", lw=1, label="n (d+dv) 4 B: exact")
        Ns = {r["N"] for r in rk if r["N"] > 0}
        for N in sorted(Ns):
            per_tok = ex[-1] / ns[-1]
            ax.axhline(N * per_tok, color="tab:red", ls="--", lw=1, label="N (d+dv) 4 B, N = %d" % N)
        eps = sorted({r["eps"] for r in rk})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n (tokens before the probes)")
        ax.set_ylabel("least bytes for p95 error <= eps")
        ax.set_title("%s, d = %d (eps %s)" % (kind, d, ", ".join("%g" % e for e in eps)))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left")
    fig.suptitle("hollow marker: the method's answer is keep everything (>= exact's memory); x: eps not met",
                 fontsize=8, y=0.995)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main(argv=None):
    a, rows = kv.sweep_cli("barrier", "barrier", load, argv, __doc__.split("\n")[0])
    if a is None:
        return rows
    panels, table = analyse(rows)
    kv.write_csv(a.out + ".csv", HEADER, table)
    plot(rows, panels, a.out + ".png")
    sys.stdout.write(kv.markdown_table(HEADER, table))
    print("wrote %s.png and %s.csv" % (a.out, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
