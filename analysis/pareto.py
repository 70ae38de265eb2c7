#!/usr/bin/python3
"""Error against memory from a `kvstream pareto` file (docs/PARETO.md).

    /usr/bin/python3 analysis/pareto.py FILE [FILE ...] -o PREFIX [--stat p50|mean|p95] [--title T]
                                        [--axis memory|reads|both]

Several FILEs (pareto runs of the same trace, e.g. with budgets that suit
different methods) are drawn as one figure: their rows are concatenated,
the exact reference taken from the first file only.

Writes PREFIX.csv: the /pareto rows, one per (method, budget, seed):

    method, budget, seed, memory_bytes, p50_error, p95_error, mean_error,
    max_error, p95_bound_ratio, label[, read_tokens_per_query, read_bytes_per_query]

(the last two when every file has them) and PREFIX.png: error against memory, log-log, memory
in % of exact's memory_bytes (exact at 100%; bytes when exact held nothing).  One line per method
through its budgets (in order of memory): at each budget the median over
seeds of the chosen statistic (--stat, default p50: the median of rel_error
over all streams and queries) at the median memory over seeds; the shaded
band spans the smallest to the largest value over the seeds.  A method
without budgets (budget "none", e.g. topk) is one point with the seeds'
spread as an error bar.  The exact reference (error 0 by definition) is a
star on the bottom edge and a dashed vertical line at its memory; other
errors of exactly 0 are drawn on the bottom edge too.  Run with Debian's
/usr/bin/python3 (numpy, h5py, matplotlib; Agg backend).  --axis reads puts
read_tokens_per_query (the tokens a query touches, summed over ranks) on
the x axis instead of memory_bytes; --axis both draws the two panels side
by side (memory left, reads right, one y axis, one legend below them; one
panel: the legend right of it, never over the curves).  The
default title names the trace the first file was run on.
"""
import argparse
import os
import sys

import h5py
import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvresults as kv  # noqa: E402

COLUMNS = ["method", "budget", "seed", "memory_bytes", "p50_error", "p95_error", "mean_error", "max_error",
           "p95_bound_ratio", "label"]
STATS = {"p50": "p50_error", "mean": "mean_error", "p95": "p95_error"}
# --axis: the x column, and its label; reads columns are absent from files of older kvstream versions
AXES = {"memory": ("memory_bytes", "memory_bytes (peak state, all streams and ranks)"),
        "reads": ("read_tokens_per_query", "read_tokens_per_query (tokens a query touches, all ranks; mean)")}
READS = ["read_tokens_per_query", "read_bytes_per_query"]
COLORS = ["C%d" % i for i in range(10)] + ["navy", "limegreen", "gold", "magenta", "teal", "saddlebrown"]


def load(path):
    """The /pareto rows as a list of dicts (strings decoded, numbers as Python scalars)."""
    with h5py.File(path, "r") as f:
        if "pareto" not in f:
            raise SystemExit("%s: no /pareto group (not written by `kvstream pareto`?)" % path)
        g = f["pareto"]
        missing = [c for c in COLUMNS if c not in g]
        if missing:
            raise SystemExit("%s: /pareto lacks %s" % (path, ", ".join(missing)))
        cols = {c: g[c][...] for c in COLUMNS + [c for c in READS if c in g]}
    n = len(cols["method"])
    if any(len(v) != n for v in cols.values()):
        raise SystemExit("%s: /pareto datasets differ in length" % path)
    rows = []
    for i in range(n):
        r = {}
        for c in cols:
            v = cols[c][i]
            r[c] = kv.text(v) if isinstance(v, (bytes, np.bytes_)) else v.item()
        rows.append(r)
    return rows


def curves(rows, stat, xcol="memory_bytes"):
    """{method: [(budget, memory, median, lo, hi), ...] in order of memory} for every method but exact."""
    by = {}
    for r in rows:
        if r["method"] != "exact":
            by.setdefault(r["method"], {}).setdefault(r["budget"], []).append(r)
    out = {}
    for m, budgets in by.items():
        pts = []
        for b, rs in budgets.items():
            y = np.array([r[stat] for r in rs], dtype=np.float64)
            mem = float(np.median([r[xcol] for r in rs]))
            pts.append((b, mem, float(np.median(y)), float(np.min(y)), float(np.max(y))))
        out[m] = sorted(pts, key=lambda p: p[1])
    return out


def exact_memory(rows):
    """Exact's memory_bytes (the first exact row), or 0 when there is none (or it held nothing)."""
    return next((r["memory_bytes"] for r in rows if r["method"] == "exact"), 0)


def with_memory_pct(rows):
    """The memory axis in % of exact's memory (exact at 100): rows with a memory_pct column and
    the axis' label; memory_bytes itself when exact held nothing (--reference stream or none)."""
    ex = exact_memory(rows)
    if ex <= 0:
        return rows, AXES["memory"]
    rows = [dict(r, memory_pct=100.0 * r["memory_bytes"] / ex) for r in rows]
    return rows, ("memory_pct", "memory held, % of exact's (peak state, all streams and ranks)")


def panel(ax, rows, stat_name, axis):
    """One panel: error (stat_name) against the x column of axis, log-log."""
    stat = STATS[stat_name]
    xcol, xlabel = AXES[axis]
    if axis == "memory":
        rows, (xcol, xlabel) = with_memory_pct(rows)
    cs = curves(rows, stat, xcol)
    pos = [v for pts in cs.values() for p in pts for v in p[2:] if v > 0 and np.isfinite(v)]
    floor = min(pos) / 4 if pos else 1e-6
    clip = lambda v: max(v, floor) if np.isfinite(v) else np.nan  # noqa: E731
    for i, (m, pts) in enumerate(sorted(cs.items())):
        # distinct colours for 16 methods, then marker and dash tell them apart;
        # methods are sorted by name, so a method looks the same in every panel
        color, mark = COLORS[i % len(COLORS)], "os^v"[i // len(COLORS) % 4]
        x = [p[1] for p in pts]
        y, lo, hi = ([clip(p[k]) for p in pts] for k in (2, 3, 4))
        if len(pts) > 1:
            ax.plot(x, y, mark + ("-" if i < len(COLORS) else "--"), color=color, label=m)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, linewidth=0)
        else:
            ax.errorbar(x, y, yerr=[[y[0] - lo[0]], [hi[0] - y[0]]], fmt="D", color=color,
                        capsize=4, label="%s (budget %s)" % (m, pts[0][0]))
    for r in rows:
        if r["method"] == "exact":
            ax.axvline(r[xcol], color="k", linestyle="--", linewidth=1)
            ax.plot([r[xcol]], [floor], "k*", markersize=12, clip_on=False,
                    label="exact (reference, error 0)")
            break
    ax.set_xscale("log")
    ax.set_yscale("log")
    if xcol == "memory_pct":  # ticks read 1%, 10%, 100%
        from matplotlib.ticker import FuncFormatter
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: "%g%%" % v))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("%s rel_error: median over seeds (band: min-max)" % stat_name)
    ax.grid(True, which="both", alpha=0.3)


def need_columns(rows, axes):
    for axis in axes:
        xcol = AXES[axis][0]
        if any(xcol not in r for r in rows):
            raise SystemExit("--axis %s: the file has no %s (written by an older kvstream)" % (axis, xcol))


def panels(axis):
    return ("memory", "reads") if axis == "both" else (axis,)


def figure(rows, stat_name, title, axes=("memory",)):
    """The figure: one panel per entry of axes, side by side, sharing the y
    axis and one legend below them (clear of the curves).  Returned, not saved."""
    need_columns(rows, axes)
    plt = kv.pyplot()
    if len(axes) == 1:
        fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
        panel(ax, rows, stat_name, axes[0])
        ax.set_title(title)
        # right of the panel, outside it: clear of the curves
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
        fig.tight_layout()
        return fig
    fig, axs = plt.subplots(1, len(axes), figsize=(6.5 * len(axes), 6.2), dpi=110, sharey=True)
    for ax, axis in zip(axs, axes):
        panel(ax, rows, stat_name, axis)
        ax.set_title("error against %s" % ("memory held" if axis == "memory" else "tokens read per query"),
                     fontsize=10)
    for ax in axs[1:]:
        ax.set_ylabel("")
    handles, labels = axs[0].get_legend_handles_labels()
    fig.suptitle(title)
    fig.tight_layout()
    # below the panels, outside them (savefig's bbox_inches="tight" makes room)
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 5),
               fontsize=9, frameon=False)
    return fig


def plot(rows, stat_name, png, title, axis="memory"):
    """PREFIX.png: one panel (axis memory or reads) or two side by side (both)."""
    fig = figure(rows, stat_name, title, panels(axis))
    fig.savefig(png, bbox_inches="tight")
    kv.pyplot().close(fig)


def trace_title(path):
    """The default title: the trace a pareto file was run on, and its shape."""
    with h5py.File(path, "r") as f:
        a = f.attrs
        if "trace" not in a:
            return os.path.basename(path)
        return "%s: %s streams x %s tokens, d = %s" % (kv.text(a["trace"]), a.get("streams", "?"),
                                                       a.get("tokens", "?"), a.get("d", "?"))


def main(argv=None):
    ap = argparse.ArgumentParser(description="error-memory plot and CSV of a `kvstream pareto` file")
    ap.add_argument("file", nargs="+", help="the -o FILE of kvstream pareto (several: one figure, same trace)")
    ap.add_argument("-o", "--output", default="pareto", help="PREFIX: writes PREFIX.png and PREFIX.csv")
    ap.add_argument("--stat", choices=sorted(STATS), default="p50", help="error statistic on the y axis")
    ap.add_argument("--title", default=None)
    ap.add_argument("--axis", choices=sorted(AXES) + ["both"], default="memory",
                    help="x axis: memory_bytes, or the tokens a query reads (read_tokens_per_query), "
                         "or both: two panels side by side")
    a = ap.parse_args(argv)
    rows = load(a.file[0])
    for path in a.file[1:]:  # one exact reference: the first file's
        rows += [r for r in load(path) if r["method"] != "exact"]
    need_columns(rows, panels(a.axis))  # before anything is written
    cols = COLUMNS + [c for c in READS if all(c in r for r in rows)]  # reads: from files that have them
    kv.write_csv(a.output + ".csv", cols, [[r[c] for c in cols] for r in rows])
    plot(rows, a.stat, a.output + ".png", a.title or trace_title(a.file[0]), a.axis)
    for r in rows:
        print("%-16s %-8s %5d %14d  p50 %-10.4g p95 %-10.4g mean %-10.4g" % (
            r["method"], r["budget"], r["seed"], r["memory_bytes"], r["p50_error"], r["p95_error"], r["mean_error"]))
    print("wrote %s.png and %s.csv (%d rows)" % (a.output, a.output, len(rows)))


if __name__ == "__main__":
    main()
