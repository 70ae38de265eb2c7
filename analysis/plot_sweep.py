#!/usr/bin/python3
"""The barrier sweep: memory needed for p95 error <= eps against n.

    /usr/bin/python3 analysis/plot_sweep.py SWEEP.h5 ... [-o PREFIX]

Reads the /sweep table of `kvstream sweep` files (columns kind, n, d,
method, budget_bytes, p95_error and, when present, param and met; root
attribute eps). Writes PREFIX.png (default sweep.png): one panel per kind,
budget_bytes against n on log-log axes, one line per (method, d); rows with
met = 0 (eps not reached even with every token) are drawn as crosses and left
out of the lines. Also writes PREFIX.csv and prints it as a table:

    kind, method, d, n, param, budget_bytes, p95_error, met, eps, file

sorted by kind, method, d, n (param/met empty when the file has none). A
straight line of slope 1 means memory linear in n (the lower bound binds, as
on `jl`); a flat line means memory independent of n (as SubGen on `sphere`).
Run with Debian's /usr/bin/python3 (numpy, h5py, matplotlib; Agg backend).
"""
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvresults as kv  # noqa: E402

HEADER = ["kind", "method", "d", "n", "param", "budget_bytes", "p95_error", "met", "eps", "file"]


def sweep_rows(paths):
    rows = []
    for p in paths:
        cols, eps = kv.load_sweep(p)
        L = len(cols["n"])
        for i in range(L):
            rows.append([cols["kind"][i], cols["method"][i], int(cols["d"][i]), int(cols["n"][i]),
                         int(cols["param"][i]) if "param" in cols else "",
                         int(cols["budget_bytes"][i]),
                         float(cols["p95_error"][i]) if "p95_error" in cols else float("nan"),
                         int(cols["met"][i]) if "met" in cols else "", eps, p])
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    return rows


def plot(rows, png):
    plt = kv.pyplot()
    kinds = sorted({r[0] for r in rows})
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.2 * len(kinds), 4.6), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", "-.", ":"]
    for ax, kind in zip(axes[0], kinds):
        rk = [r for r in rows if r[0] == kind]
        methods = sorted({r[1] for r in rk})
        ds = sorted({r[2] for r in rk})
        files = sorted({r[9] for r in rk})
        for mi, m in enumerate(methods):
            for di, d in enumerate(ds):
                # one line per file too, when several files hold this (method, d)
                fs = [f for f in files if any(r[1] == m and r[2] == d and r[9] == f for r in rk)]
                for fi, f in enumerate(fs):
                    rs = sorted((r for r in rk if r[1] == m and r[2] == d and r[9] == f), key=lambda r: r[3])
                    col, ls = colors[mi % len(colors)], styles[(di + fi) % len(styles)]
                    lab = "%s, d=%d" % (m, d) + (" [%s]" % os.path.basename(f) if len(fs) > 1 else "")
                    ok = [r for r in rs if r[7] != 0]
                    bad = [r for r in rs if r[7] == 0]
                    mk = "os^D"[fi % 4]
                    if ok:
                        ax.plot([r[3] for r in ok], [r[5] for r in ok], ls, marker=mk, color=col, label=lab)
                    if bad:
                        ax.scatter([r[3] for r in bad], [r[5] for r in bad], marker="x", color=col, s=40,
                                   label=None if ok else lab + " (eps not met)")
        ns = np.array(sorted({r[3] for r in rk}), dtype=float)
        eps = {r[8] for r in rk}
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n (tokens)")
        ax.set_ylabel("budget_bytes for p95 error <= eps")
        ax.set_title("%s (eps %s)" % (kind, ", ".join("%g" % e for e in sorted(eps))))
        if len(ns) > 1:
            # a slope-1 guide through the smallest budget at the smallest n
            y0 = min(r[5] for r in rk if r[3] == ns[0])
            ax.plot(ns, y0 * ns / ns[0], color="0.6", lw=0.8, ls=":", label="linear in n")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main(argv=None):
    a, rows = kv.sweep_cli("plot_sweep", "sweep", sweep_rows, argv, __doc__.split("\n")[0])
    if a is None:
        return rows
    kv.write_csv(a.out + ".csv", HEADER, rows)
    plot(rows, a.out + ".png")
    show = [[r[0], r[1], r[2], r[3], r[4], kv.human_bytes(r[5]), r[6], r[7]] for r in rows]
    sys.stdout.write(kv.markdown_table(["kind", "method", "d", "n", "param", "budget", "p95 err", "met"], show))
    print("wrote %s.png and %s.csv" % (a.out, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
