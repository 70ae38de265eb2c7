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
