#!/usr/bin/python3
"""Error against memory for every method in one or more kvstream results files.

    /usr/bin/python3 analysis/plot_error_memory.py RESULTS.h5|DIR ... [-o PREFIX] [--title T]

Writes PREFIX.png (default error_memory.png): p95 (filled) and p50 (hollow)
of each method's rel_error over all streams and queries, against its
memory_bytes, log-log; methods of the same kind are joined in order of
memory; the exact reference is the dashed vertical line (its error is 0 by
definition). Errors of exactly 0 sit on the bottom edge (downward triangles).
Also writes PREFIX.csv and prints the same table:

    file, label, method, spec, memory_bytes, peak_memory_bytes, kept_tokens,
    clusters, p50_error, p95_error, mean_error, max_error, tokens, ranks

Directories are searched for results files (*.h5; traces, checkpoints and
sweep files in them are skipped), so the output directory of
jobs/sweep.sbatch can be passed as is. Run with Debian's /usr/bin/python3
(numpy, h5py, matplotlib; Agg backend).
"""
import argparse
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvresults as kv  # noqa: E402

HEADER = ["file", "label", "method", "spec", "memory_bytes", "peak_memory_bytes", "kept_tokens", "clusters",
          "p50_error", "p95_error", "mean_error", "max_error", "tokens", "ranks"]


def table(results):
    """One row per (file, method); the exact reference of every file included."""
    rows = []
    for r in results:
        for m in r.methods.values():
            if m.rel_error is None:
                print("%s: %s has no rel_error: skipped" % (r.path, m.label), file=sys.stderr)
                continue
            p50, p95 = kv.error_percentiles(m.rel_error)
            e = np.asarray(m.rel_error, dtype=np.float64)
            rows.append([r.path, m.label, m.method, m.spec, m.memory_bytes, m.peak_memory_bytes, m.kept_tokens,
                         m.clusters, p50, p95, float(np.mean(e)), float(np.max(e)), r.tokens, r.ranks])
    return rows


def plot(rows, png, title):
    plt = kv.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    ref = [r for r in rows if r[2] == "exact"]
    other = [r for r in rows if r[2] != "exact"]
    pos = [v for r in other for v in (r[8], r[9]) if v > 0 and np.isfinite(v)]
    floor = min(pos) / 4 if pos else 1e-6
    traces = sorted({r[0] for r in rows})
    fam = {}
    for r in other:
        fam.setdefault(r[2], []).append(r)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rs) in enumerate(sorted(fam.items())):
        rs.sort(key=lambda r: (r[4], r[9]))
        c = colors[i % len(colors)]
        x = np.array([r[4] for r in rs], dtype=float)
        p95 = np.array([r[9] for r in rs])
        p50 = np.array([r[8] for r in rs])
        y95, y50 = np.where(p95 > 0, p95, floor), np.where(p50 > 0, p50, floor)
        ax.plot(x, y95, "-o", color=c, lw=1.2, ms=5, label=name)
        ax.plot(x, y50, ":o", color=c, lw=1.0, ms=5, mfc="none")
        ax.scatter(x[p95 <= 0], y95[p95 <= 0], color=c, marker="v", s=40, zorder=3)
        ax.scatter(x[p50 <= 0], y50[p50 <= 0], facecolors="none", edgecolors=c, marker="v", s=40, zorder=3)
    # a streamed reference (replay --reference stream) holds nothing: no line for it
    for j, mem in enumerate(sorted({r[4] for r in ref if r[4] > 0})):
        ax.axvline(mem, color="k", ls="--", lw=1, label="exact (reference)" if j == 0 else None)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("memory_bytes (peak state held, summed over ranks)")
    ax.set_ylabel("relative error (p95 filled / p50 hollow, dotted)")
    ax.set_ylim(bottom=floor * 0.8)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "error vs memory (%d results file%s)" % (len(traces), "" if len(traces) == 1 else "s"))
    if fam or ref:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", help="results files or directories of them")
    ap.add_argument("-o", "--out", default="error_memory", help="output prefix (PREFIX.png, PREFIX.csv)")
    ap.add_argument("--title", default="")
    a = ap.parse_args(argv)
    try:
        results = kv.load_results(a.inputs, skip_other=False)
    except (OSError, ValueError) as e:
        print("plot_error_memory: %s" % e, file=sys.stderr)
        return 2
    rows = table(results)
    if not rows:
        print("plot_error_memory: no methods with rel_error in %s" % " ".join(a.inputs), file=sys.stderr)
        return 2
    kv.write_csv(a.out + ".csv", HEADER, rows)
    plot(rows, a.out + ".png", a.title)
    show = [[os.path.basename(r[0]), r[1], kv.human_bytes(r[4]), r[8], r[9], r[11]] for r in rows]
    sys.stdout.write(kv.markdown_table(["file", "method", "memory", "p50 err", "p95 err", "max err"], show))
    print("wrote %s.png and %s.csv" % (a.out, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
