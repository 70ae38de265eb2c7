"""Shared helpers for kvstream's Python test scripts (run with /usr/bin/python3:
Debian's numpy and h5py)."""
import os
import subprocess
import sys

import numpy as np


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def reference_outputs(trace, semantics="full", window=0):
    """Exact attention in float64 with a two-pass (max, then sum) softmax."""
    import h5py
    with h5py.File(trace, "r") as t:
        K = t["keys"][...].astype(np.float64)
        V = t["values"][...].astype(np.float64)
        Q = t["queries"][...].astype(np.float64)
        pos = t["query_pos"][...]
        scale = float(t.attrs["scale"]) if "scale" in t.attrs else 1.0 / np.sqrt(K.shape[2])
    S, m, _ = Q.shape
    Z = np.zeros((S, m, V.shape[2]))
    L2 = np.zeros((S, m))
    for s in range(S):
        for j in range(m):
            p = int(pos[j])
            a = scale * (K[s, :p] @ Q[s, j])
            if semantics == "window-unmasked-values" and p - window > 0:
                a[: p - window] = 0.0
            a = a - a.max()
            w = np.exp(a)
            Z[s, j] = (w @ V[s, :p]) / w.sum()
            L2[s, j] = np.sqrt((w * w).sum()) / w.sum()
    return Z, L2, pos


def rel(a, b):
    den = np.linalg.norm(b, axis=-1)
    num = np.linalg.norm(a - b, axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1), num)


def mpi_cmd(np_, *args):
    mpiexec = os.environ.get("KV_MPIEXEC", "mpiexec")
    return [mpiexec, "--oversubscribe", "-n", str(np_)] + list(args)


def mpi_env():
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1")
    return env


def run(cmd, timeout=120):
    """Run cmd; a hang is a test failure, not a stuck CI."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env())
    except subprocess.TimeoutExpired:
        fail("timed out after %ds (hang?): %s" % (timeout, " ".join(cmd)))


def method_specs(exe, **want):
    """The registry's methods with their small conformance instance, from
    `kvstream methods --specs`: dicts of name, kind, spec (ready for
    --methods; it is also the results label), pinv, semantics, budget,
    seeded ("yes"/"no" and "full"/"window-unmasked"), in registry order;
    only those whose fields equal want (e.g. semantics="full")."""
    r = subprocess.run([exe, "methods", "--specs"], capture_output=True, text=True, timeout=60, env=mpi_env())
    if r.returncode:
        fail("kvstream methods --specs: " + r.stderr)
    out = []
    for line in r.stdout.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        f = line.split()
        m = dict(name=f[0], kind=f[1], spec=f[2], **dict(x.split("=", 1) for x in f[3:]))
        if all(m.get(k) == v for k, v in want.items()):
            out.append(m)
    if not out:
        fail("kvstream methods --specs: no method with %s" % want)
    return out


def methods_arg(specs):
    """--methods for a list of method_specs entries."""
    return ",".join(m["spec"] for m in specs)


# Attributes that measure the machine, not the computation: they differ
# between any two runs and are left out of bitwise comparisons.
TIMING_ATTRS = {"wall_seconds", "peak_rss_bytes", "ingest_seconds", "query_seconds", "threads"}


def _attrs_equal(a, b, where):
    for k in a.attrs:
        if k in TIMING_ATTRS:
            continue
        x, y = a.attrs[k], b.attrs.get(k)
        if y is None or not np.array_equal(np.asarray(x), np.asarray(y)):
            fail("%s: attribute %s differs: %r vs %r" % (where, k, x, y))


def results_equal(a, b, what):
    """Fail unless results files a and b agree bitwise: /query_pos, every
    dataset of every method group (outputs, rel_error, bound_ratio, ...) and
    every attribute but TIMING_ATTRS.  Returns the number of datasets."""
    import h5py
    n = 0
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        _attrs_equal(x, y, what + " /")
        if not np.array_equal(x["query_pos"][...], y["query_pos"][...]):
            fail(what + ": /query_pos differs")
        if sorted(x["methods"]) != sorted(y["methods"]):
            fail("%s: method groups differ: %s vs %s" % (what, sorted(x["methods"]), sorted(y["methods"])))
        for g in x["methods"]:
            gx, gy = x["methods"][g], y["methods"][g]
            _attrs_equal(gx, gy, "%s /methods/%s" % (what, g))
            for d in gx:
                if d not in gy or not np.array_equal(gx[d][...], gy[d][...]):
                    fail("%s: /methods/%s/%s differs" % (what, g, d))
                n += 1
    return n
