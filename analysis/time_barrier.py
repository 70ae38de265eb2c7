#!/usr/bin/python3
"""The time-barrier figure: least reads per query for error <= eps against n.

    /usr/bin/python3 analysis/time_barrier.py SWEEP.h5 ... [-o PREFIX]

Reads `kvstream sweep --axis reads` files (scripts/run-time-barrier.sh
writes them) and writes PREFIX.png (default time-barrier.png): per (kind, d)
two log-log panels against n, left the mean tokens a query read
(/sweep/read_tokens, metadata scanned included) at the least parameter that
met eps, right the memory held there (budget_bytes), with exact's n tokens
and n (d + dv) 4 bytes as dotted lines; x where eps was not met even at
parameter n.  Also PREFIX.csv with, per (kind, d, method), the least-squares
slopes of log reads and log memory against log n over the n where it met
eps, and the least memory over those n in units of n d 4 bytes:

    kind, d, method, n_lo, n_hi, points, reads_slope, memory_slope, all_met, min_memory_over_nd

printed as a table.  Run with Debian's /usr/bin/python3.
"""
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvresults as kv  # noqa: E402

HEADER = ["kind", "d", "method", "n_lo", "n_hi", "points", "reads_slope", "memory_slope", "all_met",
          "min_memory_over_nd"]


def load(paths):
    rows = []
    for p in paths:
        cols, eps = kv.load_sweep(p)
        if "read_tokens" not in cols:
            raise ValueError("%s: /sweep/read_tokens missing (not a sweep --axis reads)" % p)
        for i in range(len(cols["n"])):
            rows.append(dict(kind=cols["kind"][i], method=cols["method"][i], n=int(cols["n"][i]),
                             d=int(cols["d"][i]), mem=int(cols["budget_bytes"][i]), met=int(cols["met"][i]),
                             reads=float(cols["read_tokens"][i]), exact=int(cols["exact_bytes"][i]), eps=eps))
    return rows


def fit(xs, ys):
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def analyse(rows):
    panels = sorted({(r["kind"], r["d"]) for r in rows})
    table = []
    for kind, d in panels:
        rk = [r for r in rows if r["kind"] == kind and r["d"] == d]
        for m in sorted({r["method"] for r in rk}, key=lambda x: [r["method"] for r in rk].index(x)):
            ok = sorted((r for r in rk if r["method"] == m and r["met"] and r["reads"] > 0), key=lambda r: r["n"])
            ns = [r["n"] for r in ok]
            rs = fit(ns, [r["reads"] for r in ok])
            ms = fit(ns, [r["mem"] for r in ok])
            over = min((r["mem"] / (r["n"] * d * 4.0) for r in ok), default=float("nan"))
            table.append([kind, d, m, ns[0] if ns else "", ns[-1] if ns else "", len(ns),
                          round(rs, 3) if rs == rs else "nan", round(ms, 3) if ms == ms else "nan",
                          int(len(ok) == len({r["n"] for r in rk})), round(over, 3) if over == over else "nan"])
    return panels, table


def plot(rows, panels, png):
    plt = kv.pyplot()
    fig, axes = plt.subplots(len(panels), 2, figsize=(11.2, 4.4 * len(panels)), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (ax_r, ax_m), (kind, d) in zip(axes, panels):
        rk = [r for r in rows if r["kind"] == kind and r["d"] == d]
        ns = np.array(sorted({r["n"] for r in rk}), dtype=float)
        methods = []
        for r in rk:
            if r["method"] not in methods:
                methods.append(r["method"])
        for i, m in enumerate(methods):
            c = colors[i % len(colors)]
            rm = sorted((r for r in rk if r["method"] == m), key=lambda r: r["n"])
            ok = [r for r in rm if r["met"]]
            miss = [r for r in rm if not r["met"]]
            for ax, key in ((ax_r, "reads"), (ax_m, "mem")):
                if ok:
                    ax.plot([r["n"] for r in ok], [r[key] for r in ok], "o-", color=c, ms=4, lw=1, label=m)
                if miss:
                    ax.scatter([r["n"] for r in miss], [max(r[key], 1) for r in miss], marker="x", color=c, s=30)
        ax_r.plot(ns, ns, ":", color="k", lw=1, label="n tokens (exact reads every token)")
        ax_m.plot(ns, [min(r["exact"] for r in rk if r["n"] == n) for n in ns], ":", color="k", lw=1,
                  label="n (d+dv) 4 B: exact")
        eps = ", ".join("%g" % e for e in sorted({r["eps"] for r in rk}))
        for ax, yl, t in ((ax_r, "tokens read per query (metadata included)", "reads"),
                          (ax_m, "bytes held at that answer", "memory")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("n (tokens before the probes)")
            ax.set_ylabel(yl)
            ax.set_title("%s, d = %d: least %s for p95 error <= %s" % (kind, d, t, eps), fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6.5, loc="upper left")
    fig.suptitle("x: eps not met even at parameter n", fontsize=8, y=0.995)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main(argv=None):
    a, rows = kv.sweep_cli("time_barrier", "time-barrier", load, argv, __doc__.split("\n")[0])
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
