"""Shared helpers for kvstream's Python test scripts (run with /usr/bin/python3:
Debian's numpy and h5py)."""
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np


def fail(msg):
    print("FAIL: " + msg)
    sys.exit(1)


def load_trace64(trace):
    """A kvtrace's keys, values, queries (float64), query positions, scale and root attributes."""
    import h5py
    with h5py.File(trace, "r") as t:
        K = t["keys"][...].astype(np.float64)
        V = t["values"][...].astype(np.float64)
        Q = t["queries"][...].astype(np.float64)
        pos = t["query_pos"][...]
        scale = float(t.attrs["scale"]) if "scale" in t.attrs else 1.0 / np.sqrt(K.shape[2])
        attrs = dict(t.attrs)
    return K, V, Q, pos, scale, attrs


def reference_outputs(trace, semantics="full", window=0):
    """Exact attention in float64 with a two-pass (max, then sum) softmax."""
    K, V, Q, pos, scale, _ = load_trace64(trace)
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
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1",
               OMPI_MCA_odls_base_sigkill_timeout="0")  # no 2 s wait after a refusal
    return env


def ready_env(env=None):
    """env (default mpi_env()) with KVSTREAM_READY=1: every kvstream process
    prints "kvstream: ready: pid N ..." once its stop handlers are in place
    (before MPI_Init), and rank 0 of a replay "kvstream: ready: replaying ..."
    when the queries start (stderr)."""
    env = dict(env if env is not None else mpi_env())
    env["KVSTREAM_READY"] = "1"
    return env


class Lines:
    """The stdout and stderr of a running job (a Popen with both as text
    pipes), read as they come by two threads, so that a test waits for a
    line kvstream prints instead of sleeping and hoping."""

    def __init__(self, proc):
        self.proc, self.out, self.err = proc, [], []
        self.cv = threading.Condition()
        self.threads = [threading.Thread(target=self._read, args=(f, buf), daemon=True)
                        for f, buf in ((proc.stdout, self.out), (proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    def _read(self, f, buf):
        for line in f:
            with self.cv:
                buf.append(line)
                self.cv.notify_all()
        with self.cv:
            buf.append(None)  # end of file
            self.cv.notify_all()

    def wait(self, text, count=1, timeout=300):
        """True once `count` stderr lines contain text; False if stderr ends
        first, or after timeout seconds (a hang guard, not a timing)."""
        def seen():
            return sum(1 for x in self.err if x and text in x) >= count or None in self.err
        with self.cv:
            self.cv.wait_for(seen, timeout)
            return sum(1 for x in self.err if x and text in x) >= count

    def pids(self):
        """The pids of the kvstream processes that said they handle stops."""
        with self.cv:
            return [int(m.group(1)) for x in self.err if x for m in [re.search(r"ready: pid (\d+) ", x)] if m]

    def communicate(self, timeout):
        """Wait for the end (subprocess.TimeoutExpired after timeout s);
        returns (stdout, stderr) as text."""
        end = time.time() + timeout
        self.proc.wait(timeout)
        for t in self.threads:
            t.join(max(0.0, end - time.time()))  # a leftover child may hold a pipe
        if any(t.is_alive() for t in self.threads):
            raise subprocess.TimeoutExpired(self.proc.args, timeout)
        return "".join(x for x in self.out if x), "".join(x for x in self.err if x)


def signal_one_rank(cmd, after, sig, count=1, timeout=300):
    """Start cmd (KVSTREAM_READY=1), wait until `count` stderr lines contain
    `after`, send sig to one kvstream process (the highest pid) and wait
    for the end.  Returns (exit status, stderr)."""
    import signal as _signal
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ready_env())
    job = Lines(proc)
    if not job.wait(after, count=count, timeout=timeout) or not job.pids():
        proc.kill()
        fail("no '%s' line (%d processes ready): %s" % (after, len(job.pids()), "".join(filter(None, job.err))))
    os.kill(max(job.pids()), sig)
    try:
        _, err = job.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        fail("no exit within %d s of signal %d to one rank (hang?): %s" % (timeout, _signal.Signals(sig), " ".join(cmd)))
    return proc.returncode, err


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
TIMING_ATTRS = {"wall_seconds", "peak_rss_bytes", "ingest_seconds", "query_seconds", "threads",
                "floor_read_bytes_per_second", "floor_flops_per_second", "time_over_floor"}


def _attrs_equal(a, b, where):
    for k in a.attrs:
        if k in TIMING_ATTRS:
            continue
        x, y = a.attrs[k], b.attrs.get(k)
        if y is None or not np.array_equal(np.asarray(x), np.asarray(y)):
            fail("%s: attribute %s differs: %r vs %r" % (where, k, x, y))


def _same(x, y):
    """Equal arrays, NaNs in the same places counting as equal (floats)."""
    if x.dtype.kind == "f" and y.dtype.kind == "f":
        return np.array_equal(x, y, equal_nan=True)
    return np.array_equal(x, y)


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
                sub = [(d, gx[d], gy.get(d))]
                if isinstance(gx[d], h5py.Group):  # per_stream
                    sub = [(d + "/" + e, gx[d][e], gy[d].get(e) if d in gy else None) for e in gx[d]]
                for name, dx, dy in sub:
                    if dy is None or not _same(dx[...], dy[...]):
                        fail("%s: /methods/%s/%s differs" % (what, g, name))
                    n += 1
    return n
