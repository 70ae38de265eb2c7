#!/usr/bin/python3
"""Exact replay vs an independent float64 reference, and the results layout.

usage: check_exact.py TRACE RESULTS [RESULTS ...]
Every results file must hold /methods/exact/outputs equal to the reference
(rel. 2-norm error <= 2e-6 per query: inputs and logits are float32), and all
results files must agree with each other to 1e-6 (P = 1, 2, 3, 4 ranks)."""
import sys

import h5py
import numpy as np

from kvtest import fail, reference_outputs, rel

trace, results = sys.argv[1], sys.argv[2:]
Z, L2, pos = reference_outputs(trace)
S, m, dv = Z.shape
outs = []
for path in results:
    with h5py.File(path, "r") as r:
        g = r["methods/exact"]
        for a in ("spec", "memory_bytes", "peak_memory_bytes", "ingest_seconds", "query_seconds"):
            if a not in g.attrs:
                fail("%s: /methods/exact lacks attribute %s" % (path, a))
        for a in ("trace", "ranks", "threads", "kvstream_version"):
            if a not in r.attrs:
                fail("%s: root lacks attribute %s" % (path, a))
        out = g["outputs"][...]
        if out.shape != (S, m, dv) or out.dtype != np.float32:
            fail("%s: outputs %s %s, expected (%d, %d, %d) float32" % (path, out.shape, out.dtype, S, m, dv))
        re = g["rel_error"][...]
        if re.shape != (S, m) or re.dtype != np.float64 or np.any(re != 0):
            fail("%s: exact rel_error must be all 0 [S, m] float64" % path)
        # exact holds every token: (d + dv) * 4 bytes each (plus a small run table)
        with h5py.File(trace, "r") as t:
            n, d = t["keys"].shape[1], t["keys"].shape[2]
        need = S * n * (d + dv) * 4
        mem = int(g.attrs["memory_bytes"])
        if not (need <= mem <= need + 4096 * S * int(r.attrs["ranks"])):
            fail("%s: exact memory_bytes %d, expected about %d" % (path, mem, need))
        # per-query costs (replay/cost.h): a query at prefix p reads the p
        # tokens before it, summed over ranks, 2 (d + dv) flops each; a
        # batch reads its longest prefix once, so bytes are at most that
        for a in ("read_bytes_per_query", "flops_per_query", "read_tokens_per_query", "read_tokens_p95",
                  "time_over_floor"):
            if a not in g.attrs:
                fail("%s: /methods/exact lacks attribute %s" % (path, a))
        qp = r["query_pos"][...].astype(np.float64)
        tok, fl, rb = (float(g.attrs[a]) for a in ("read_tokens_per_query", "flops_per_query", "read_bytes_per_query"))
        if abs(tok - qp.mean()) > 1e-9 * qp.mean():
            fail("%s: exact read_tokens_per_query %.17g, expected the mean prefix %.17g" % (path, tok, qp.mean()))
        if abs(fl - 2 * (d + dv) * qp.mean()) > 1e-9 * fl:
            fail("%s: exact flops_per_query %.17g, expected 2 (d + dv) x mean prefix" % (path, fl))
        if not (0 < rb <= 4 * (d + dv) * qp.max()):
            fail("%s: exact read_bytes_per_query %.17g outside (0, 4 (d + dv) max prefix]" % (path, rb))
        p95 = float(g.attrs["read_tokens_p95"])
        if not (qp.min() <= p95 <= qp.max()):
            fail("%s: exact read_tokens_p95 %g outside the prefixes [%g, %g]" % (path, p95, qp.min(), qp.max()))
        tf = float(g.attrs["time_over_floor"])
        if not (r.attrs["floor_read_bytes_per_second"] > 0 and r.attrs["floor_flops_per_second"] > 0 and tf > 0):
            fail("%s: floors %g B/s, %g flop/s and time_over_floor %g must be positive" % (
                path, r.attrs["floor_read_bytes_per_second"], r.attrs["floor_flops_per_second"], tf))
        if "bound_ratio" in g and np.any(g["bound_ratio"][...] != 0):
            fail("%s: exact bound_ratio must be 0" % path)
        e = rel(out.astype(np.float64), Z)
        print("%s: ranks %d, max rel err vs float64 reference %.3g" % (path, r.attrs["ranks"], e.max()))
        if e.max() > 2e-6:
            j = np.unravel_index(e.argmax(), e.shape)
            fail("%s: query %s rel err %.3g > 2e-6" % (path, j, e.max()))
        outs.append(out.astype(np.float64))
for path, o in zip(results[1:], outs[1:]):
    a = rel(o, outs[0]).max()
    print("%s vs %s: max rel diff %.3g" % (path, results[0], a))
    if a > 1e-6:
        fail("%s and %s disagree by %.3g > 1e-6" % (path, results[0], a))
print("check_exact: %d passed, 0 failed" % (len(results) + len(results) - 1))
