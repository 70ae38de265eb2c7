#!/usr/bin/python3
"""Shared loading code for the analysis scripts: kvstream results files
(`kvstream replay -o`, docs/RESULTS_FORMAT.md) and barrier-sweep files
(`kvstream sweep -o`), plus small table/CSV/plot helpers.

Needs numpy, h5py and matplotlib: run the scripts with Debian's
/usr/bin/python3 (the python3 first on PATH may lack these modules).
Plots use matplotlib's Agg backend (no display needed).
"""
import argparse
import csv
import glob
import os
import sys

import h5py
import numpy as np

RESULTS_FORMAT = "kvstream-results"


def text(v):
    """An HDF5 string attribute or element (bytes, numpy bytes/str) as str."""
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray) and v.shape == ():
        return text(v[()])
    return str(v)


def _scalar(v):
    if isinstance(v, (bytes, np.bytes_, str, np.str_)):
        return text(v)
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.reshape(())[()]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


class Method:
    """One /methods/<label> group: its attributes and (optionally) arrays."""

    def __init__(self, label, group, arrays):
        self.label = label
        self.attrs = {k: _scalar(v) for k, v in group.attrs.items()}
        a = self.attrs
        self.spec = a.get("spec", label)
        self.method = a.get("method", self.spec.split(":")[0])
        self.memory_bytes = int(a.get("memory_bytes", -1))
        self.peak_memory_bytes = int(a.get("peak_memory_bytes", -1))
        # memory_bytes x 8 / (streams x tokens); files before it: -1
        self.bits_per_token = float(a.get("bits_per_token", -1.0))
        self.ingest_seconds = float(a.get("ingest_seconds", float("nan")))
        self.query_seconds = float(a.get("query_seconds", float("nan")))
        self.clusters = int(a.get("clusters", -1))
        self.kept_tokens = int(a.get("kept_tokens", -1))
        self.is_reference = bool(a.get("is_reference", 0))
        self.rel_error = group["rel_error"][...] if arrays and "rel_error" in group else None
        self.bound_ratio = group["bound_ratio"][...] if arrays and "bound_ratio" in group else None
        # /methods/<label>/per_stream (docs/RESULTS_FORMAT.md): name -> [S] array
        # (rel_error_p50, rel_error_p95, rel_error_mean, bound_ratio_p95,
        # rel_error_max, small_outputs; layer and kv_head for recorded traces);
        # None in files written before it or with --reference none
        ps = group.get("per_stream")
        self.per_stream = {k: ps[k][...] for k in ps} if ps is not None else None


class Results:
    """A results file: root attributes (strings decoded, numbers as Python
    scalars) in .attrs and as attributes (r.ranks, r.wall_seconds, ...),
    /query_pos, and the methods in file order (reference first if present)."""

    def __init__(self, path, arrays=True):
        self.path = path
        with h5py.File(path, "r") as f:
            fmt = text(f.attrs.get("format", b""))
            if fmt != RESULTS_FORMAT:
                raise ValueError("%s: not a kvstream results file (format %r)" % (path, fmt))
            if "methods" not in f:
                raise ValueError("%s: no /methods group (replay did not finish?)" % path)
            self.attrs = {k: _scalar(v) for k, v in f.attrs.items()}
            self.query_pos = f["query_pos"][...] if "query_pos" in f else None
            self.methods = {}
            for label in f["methods"]:
                self.methods[label] = Method(label, f["methods"][label], arrays)
            # methods --budget could not hold (replay without --strict): label -> attributes
            self.does_not_fit = {label: {k: _scalar(v) for k, v in g.attrs.items()}
                                 for label, g in f["does_not_fit"].items()} if "does_not_fit" in f else {}
        for k in ("ranks", "threads", "streams", "tokens", "queries", "d", "dv", "batch", "seed"):
            setattr(self, k, int(self.attrs.get(k, -1)))
        self.wall_seconds = float(self.attrs.get("wall_seconds", float("nan")))
        self.trace = self.attrs.get("trace", "")
        self.reference = self.attrs.get("reference", "exact")  # "none" with replay --reference none
        # memory | stream | none (files written before reference modes: memory); with none the
        # methods have no rel_error / bound_ratio (Method.rel_error is None)
        self.reference_mode = self.attrs.get("reference_mode", "memory")

    def method_seconds(self):
        """ingest + query seconds summed over all methods (each is a max over ranks)."""
        return sum(m.ingest_seconds + m.query_seconds for m in self.methods.values())


def is_results_file(path):
    try:
        with h5py.File(path, "r") as f:
            return text(f.attrs.get("format", b"")) == RESULTS_FORMAT and "methods" in f
    except (OSError, ValueError):
        return False


def expand(paths, pattern="*.h5"):
    """Files named in paths, directories expanded to their pattern matches (sorted)."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(sorted(glob.glob(os.path.join(p, pattern))))
        else:
            out.append(p)
    return out


def load_results(paths, arrays=True, skip_other=True):
    """Results objects for files/directories in paths. In directories, HDF5
    files that are not results files (traces, checkpoints, sweeps) are skipped
    silently; a named file that is not one is an error unless skip_other."""
    out = []
    for p in paths:
        in_dir = os.path.isdir(p)
        for f in expand([p]):
            if in_dir and not is_results_file(f):
                continue
            try:
                out.append(Results(f, arrays))
            except (OSError, ValueError) as e:
                if not skip_other:
                    raise
                print("skipping %s: %s" % (f, e), file=sys.stderr)
    return out


def error_percentiles(rel_error, qs=(50, 95)):
    """Percentiles (numpy's default linear interpolation) of rel_error over all
    streams and queries; NaN when there is no finite value."""
    x = np.asarray(rel_error, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return [float("nan")] * len(qs)
    return [float(v) for v in np.percentile(x, qs)]


def load_sweep(path):
    """A barrier-sweep file: (columns, eps). columns maps each 1-D dataset of
    /sweep to a list (strings decoded, numbers as Python scalars); all have the
    same length."""
    with h5py.File(path, "r") as f:
        if "sweep" not in f:
            raise ValueError("%s: no /sweep group (not a kvstream sweep file)" % path)
        g = f["sweep"]
        cols = {}
        for k in g:
            a = g[k][...]
            if a.ndim != 1:
                raise ValueError("%s: /sweep/%s is not 1-D" % (path, k))
            cols[k] = [_scalar(v) for v in a]
        eps = float(f.attrs["eps"]) if "eps" in f.attrs else float("nan")
    lens = {k: len(v) for k, v in cols.items()}
    if len(set(lens.values())) > 1:
        raise ValueError("%s: /sweep columns differ in length: %s" % (path, lens))
    for k in ("kind", "n", "d", "method", "budget_bytes"):
        if k not in cols:
            raise ValueError("%s: /sweep/%s missing" % (path, k))
    return cols, eps


def sweep_cli(prog, default_out, load, argv=None, description=None):
    """The command line of the sweep scripts: `inputs... [-o PREFIX]`, then
    load(inputs) -> rows. Returns (args, rows), or (None, 2) after one line
    naming the problem on stderr (unreadable file, empty table)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("inputs", nargs="+", help="sweep files (kvstream sweep -o)")
    ap.add_argument("-o", "--out", default=default_out, help="output prefix (PREFIX.png, PREFIX.csv)")
    a = ap.parse_args(argv)
    try:
        rows = load(a.inputs)
    except (OSError, ValueError, KeyError) as e:
        print("%s: %s" % (prog, e), file=sys.stderr)
        return None, 2
    if not rows:
        print("%s: empty /sweep table" % prog, file=sys.stderr)
        return None, 2
    return a, rows


def fmt_num(v):
    """Numbers for CSV/Markdown: ints as ints, floats round-trippable (repr)."""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([fmt_num(v) for v in r])


def markdown_table(header, rows, floatfmt="%.4g"):
    def cell(v):
        if isinstance(v, float):
            return floatfmt % v
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(cell(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def human_bytes(b):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or unit == "TiB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (b, unit)
        b /= 1024.0
