#!/usr/bin/python3
"""Pictures of heads: each method's error by (layer, kv head), and error
against memory per layer, from kvstream results files with per_stream.

    /usr/bin/python3 analysis/heads.py RESULTS.h5 [MORE.h5 ...] -o PREFIX [--stat p50|p95|bound]

Reads /methods/<label>/per_stream (docs/RESULTS_FORMAT.md): a stream's
rel_error_p50 (or p95, or bound_ratio_p95 with --stat) and its (layer,
kv_head), which replay writes for recorded traces (stream s = layer x
n_kv_heads + kv head); a trace without them is drawn as one layer of S heads.
The exact reference (error 0 by definition) is left out.  Writes:

  PREFIX_heatmap.png  one panel per (file, method): the statistic by layer
                      (rows) and kv head (columns), one colour scale for all
                      panels, each cell printed;
  PREFIX_memory.png   for each layer (a head group), the median over its heads
                      of the statistic against the method's bits per token
                      (memory_bytes x 8 / (S n)), one marker per method, one
                      colour per layer; points of the same method and layer
                      from several files (budgets) are joined in memory order;
  PREFIX.csv          every plotted cell: file, label, method, stream, layer,
                      kv_head, value, bits_per_token, memory_bytes.

Run with Debian's /usr/bin/python3 (numpy, h5py, matplotlib; Agg backend).
Exit 2 with one line when a file has no per_stream figures.
"""
import argparse
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvresults as kv  # noqa: E402

STATS = {"p50": "rel_error_p50", "p95": "rel_error_p95", "bound": "bound_ratio_p95"}
HEADER = ["file", "label", "method", "stream", "layer", "kv_head", "value", "bits_per_token", "memory_bytes"]


def heads_of(m):
    """(layer, kv_head) arrays of a method's streams; one layer when absent."""
    ps = m.per_stream
    S = len(ps["rel_error_p50"])
    if "layer" in ps and "kv_head" in ps:
        return ps["layer"].astype(int), ps["kv_head"].astype(int)
    return np.zeros(S, dtype=int), np.arange(S)


def collect(results, key):
    """[(file, Method, layer[], kv_head[], value[])] for every non-reference method."""
    out = []
    for r in results:
        for m in r.methods.values():
            if m.is_reference:
                continue
            if m.per_stream is None or key not in m.per_stream:
                raise ValueError("%s: method %s has no per_stream/%s (replay before per_stream, or --reference "
                                 "none)" % (r.path, m.label, key))
            layer, head = heads_of(m)
            out.append((r.path, m, layer, head, np.asarray(m.per_stream[key], dtype=np.float64)))
    return out


def grid(layer, head, val):
    g = np.full((layer.max() + 1, head.max() + 1), np.nan)
    g[layer, head] = val
    return g


def plot_heatmap(plt, panels, key, path, many_files):
    n = len(panels)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    finite = np.concatenate([v[np.isfinite(v)] for _, _, _, _, v in panels] + [np.zeros(1)])
    vmax = max(float(finite.max()), 1e-12)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows + 0.6), squeeze=False, constrained_layout=True)
    im = None
    for i, (f, m, layer, head, v) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        g = grid(layer, head, v)
        im = ax.imshow(g, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for (li, hi), x in np.ndenumerate(g):
            if np.isfinite(x):
                ax.text(hi, li, "%.2f" % x, ha="center", va="center", fontsize=7,
                        color="white" if x < 0.6 * vmax else "black")
        title = m.label + (" (%s)" % os.path.basename(f) if many_files else "")
        ax.set_title("%s\n%.1f bits/token" % (title, m.bits_per_token), fontsize=8)
        ax.set_xlabel("kv head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(g.shape[1]))
        ax.set_yticks(range(g.shape[0]))
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.colorbar(im, ax=axes, shrink=0.8, label=key)
    fig.suptitle("%s by (layer, kv head)" % key)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(plt, panels, key, path):
    fig, ax = plt.subplots(figsize=(7.5, 5))
    layers = sorted({int(x) for _, _, layer, _, _ in panels for x in layer})
    cmap = plt.get_cmap("viridis", max(len(layers), 2))
    markers = "osD^v<>pPX*h"
    methods = sorted({m.method for _, m, _, _, _ in panels})
    pts = {}  # (method, layer) -> [(bits, median)]
    for _, m, layer, _, v in panels:
        for li in layers:
            sel = v[layer == li]
            sel = sel[np.isfinite(sel)]
            if sel.size:
                pts.setdefault((m.method, li), []).append((m.bits_per_token, float(np.median(sel))))
    for (meth, li), xy in sorted(pts.items()):
        xy.sort()
        x, y = zip(*xy)
        ax.plot(x, y, marker=markers[methods.index(meth) % len(markers)], color=cmap(layers.index(li)),
                linestyle="-" if len(xy) > 1 else "none", markersize=6, alpha=0.85)
    for i, meth in enumerate(methods):  # legend: markers for methods, colours for layers
        ax.plot([], [], marker=markers[i % len(markers)], color="gray", linestyle="none", label=meth)
    for li in layers:
        ax.plot([], [], marker="s", color=cmap(layers.index(li)), linestyle="none", label="layer %d" % li)
    ax.set_xlabel("bits per token (memory_bytes x 8 / (S n))")
    ax.set_ylabel("median over the layer's heads of %s" % key)
    ax.set_title("error against memory per head group (layer)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="heads.py", description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", help="results files (kvstream replay -o)")
    ap.add_argument("-o", "--out", required=True, help="output prefix")
    ap.add_argument("--stat", choices=sorted(STATS), default="p50", help="per-stream figure to draw (default p50)")
    a = ap.parse_args(argv)
    key = STATS[a.stat]
    try:
        results = kv.load_results(a.inputs, skip_other=False)
        panels = collect(results, key)
    except (OSError, ValueError, KeyError) as e:
        print("heads.py: %s" % e, file=sys.stderr)
        return 2
    if not panels:
        print("heads.py: no method besides the exact reference", file=sys.stderr)
        return 2
    plt = kv.pyplot()
    plot_heatmap(plt, panels, key, a.out + "_heatmap.png", len(results) > 1)
    plot_memory(plt, panels, key, a.out + "_memory.png")
    rows = []
    for f, m, layer, head, v in panels:
        for s in range(len(v)):
            rows.append([f, m.label, m.method, s, int(layer[s]), int(head[s]), float(v[s]), m.bits_per_token,
                         m.memory_bytes])
    kv.write_csv(a.out + ".csv", HEADER, rows)
    print("heads.py: %d methods, %d streams: %s_heatmap.png, %s_memory.png, %s.csv" %
          (len(panels), len(panels[0][4]), a.out, a.out, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
