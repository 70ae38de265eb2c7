#!/usr/bin/python3
"""bench-peers.py - exact attention in numpy and PyTorch on bench_exact's shapes.

    /usr/bin/python3 scripts/bench-peers.py [--bench build/bench/bench_exact]
        [--log2n 20] [--d 128] [--reps 7] [--threads 2]
        [--kv-single GBPS] [--kv-batch SECONDS]

Shapes (those of bench/bench_exact.c): n = 2^log2n tokens of float32 keys
and values, d = dv; "single" is one query, softmax(scale K q) V with the max
shift, reported as K+V GB/s; "batch" is 64 queries at the same position,
softmax(scale Q K^T) V, reported as seconds and GFLOP/s counting 2d + 2dv
flops per query and token (exp not counted, as in bench_exact).  Best of
--reps runs each (the batch: of ceil(reps / 3), it is 64x the work).

kvstream's figures for the ratios come from running --bench (bench_exact,
whose line for --threads threads is parsed) or from --kv-single / --kv-batch;
without either only the peers are printed.  Ratios are speed ratios
(kvstream / peer > 1: kvstream faster).

Which BLAS numpy uses decides its figures: Debian's numpy links the
libblas.so.3 alternative, the reference BLAS unless an optimised one such as
libopenblas0-pthread is installed (`apt-get install libopenblas0-pthread`).
The script reports the BLAS library actually loaded (from /proc/self/maps)
and whether that package is installed.  PyTorch is optional
(`apt-get install python3-torch`); it is skipped, with a note, when absent.
"""
import argparse
import os
import re
import subprocess
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description="exact attention in numpy / PyTorch on bench_exact's shapes")
    p.add_argument("--bench", help="bench_exact binary to run for kvstream's figures")
    p.add_argument("--log2n", type=int, default=20)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2, choices=(1, 2))
    p.add_argument("--kv-single", type=float, help="kvstream's single-query K+V GB/s (instead of --bench)")
    p.add_argument("--kv-batch", type=float, help="kvstream's 64-query batch seconds (instead of --bench)")
    a = p.parse_args()
    if not 10 <= a.log2n <= 26 or not 1 <= a.d <= 4096 or a.reps < 1:
        p.error("need 10 <= log2n <= 26, 1 <= d <= 4096, reps >= 1")
    return a


def kvstream_figures(a):
    """(single GB/s, batch seconds) from bench_exact's output, or the given ones"""
    if not a.bench:
        return a.kv_single, a.kv_batch
    cmd = [a.bench, str(a.log2n), str(a.d), str(a.reps)]
    print("running", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(out.rstrip())
    single = batch = None
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+exact, 1 query\s+([\d.]+)\s+([\d.]+) GB/s", line)
        if m and int(m.group(1)) == a.threads:
            single = float(m.group(3))
        m = re.match(r"\s*(\d+)\s+exact, 64 queries, 1 pos\s+([\d.]+)\s", line)
        if m and int(m.group(1)) == a.threads:
            batch = float(m.group(2))
    if single is None or batch is None:
        sys.exit("bench-peers: could not read the %d-thread lines of %s's output" % (a.threads, a.bench))
    return single, batch


def blas_report():
    """the BLAS shared objects this process has loaded, and the package state"""
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if re.search(r"blas|lapack|mkl|blis", os.path.basename(path)):
                libs.add(os.path.realpath(path))
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "libopenblas0-pthread"], capture_output=True, text=True)
    installed = r.returncode == 0 and "install ok installed" in r.stdout
    return sorted(libs), installed


def best(fn, reps):
    t = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t = min(t, time.perf_counter() - t0)
    return t


def main():
    a = parse_args()
    # thread counts before numpy / torch load their BLAS and OpenMP runtimes
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[v] = str(a.threads)
    kv_single, kv_batch = kvstream_figures(a)

    import numpy as np
    n, d, nq = 1 << a.log2n, a.d, 64
    rng = np.random.default_rng(1)
    K = rng.standard_normal((n, d), dtype=np.float32)
    V = rng.standard_normal((n, d), dtype=np.float32)
    Q = rng.standard_normal((nq, d), dtype=np.float32)
    scale = np.float32(1.0 / np.sqrt(d))
    kv_bytes = 2.0 * n * d * 4
    flops = nq * n * (2.0 * d + 2.0 * d)
    breps = max(1, (a.reps + 2) // 3)

    def np_single():
        s = K @ (Q[0] * scale)
        p = np.exp(s - s.max())
        return (p @ V) / p.sum()

    S = np.empty((nq, n), dtype=np.float32)

    def np_batch():
        np.matmul(Q * scale, K.T, out=S)
        np.subtract(S, S.max(axis=1, keepdims=True), out=S)
        np.exp(S, out=S)
        return (S @ V) / S.sum(axis=1, keepdims=True)

    np_single()  # load the BLAS before looking for it
    libs, openblas = blas_report()
    print("numpy %s, BLAS loaded: %s" % (np.__version__, ", ".join(libs) or "none found"))
    if openblas:
        print("libopenblas0-pthread: installed")
    else:
        print("libopenblas0-pthread: NOT installed - numpy then runs Debian's reference BLAS (unoptimised, "
              "single-threaded), far below what users with OpenBLAS see; install it with "
              "`apt-get install libopenblas0-pthread` to compare against OpenBLAS")
    print("shapes: n = 2^%d, d = dv = %d, %d threads; single best of %d, batch best of %d"
          % (a.log2n, d, a.threads, a.reps, breps), flush=True)

    rows = []
    t1 = best(np_single, a.reps)
    tb = best(np_batch, breps)
    rows.append(("numpy", t1, tb))

    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch: not installed (python3-torch), skipped")
    if torch is not None:
        torch.set_num_threads(a.threads)
        tK, tV, tQ = torch.from_numpy(K), torch.from_numpy(V), torch.from_numpy(Q)

        def t_single():
            with torch.no_grad():
                s = tK @ (tQ[0] * scale)
                p = torch.exp(s - s.max())
                return (p @ tV) / p.sum()

        def t_batch():
            with torch.no_grad():
                s = (tQ * scale) @ tK.T
                s = torch.exp(s - s.max(dim=1, keepdim=True).values)
                return (s @ tV) / s.sum(dim=1, keepdim=True)

        print("PyTorch %s, %d threads" % (torch.__version__, torch.get_num_threads()), flush=True)
        t_single()
        rows.append(("PyTorch", best(t_single, a.reps), best(t_batch, breps)))

    print("%-10s %14s %12s %12s %16s %16s" % ("", "single GB/s", "batch s", "batch GF/s", "kv/peer single",
                                               "kv/peer batch"))
    if kv_single is not None and kv_batch is not None:
        print("%-10s %14.2f %12.4f %12.1f %16s %16s" % ("kvstream", kv_single, kv_batch, flops / kv_batch / 1e9,
                                                         "1.00", "1.00"))
    for name, t1, tb in rows:
        rs = "%.2f" % (kv_single / (kv_bytes / t1 / 1e9)) if kv_single else "-"
        rb = "%.2f" % (tb / kv_batch) if kv_batch else "-"
        print("%-10s %14.2f %12.4f %12.1f %16s %16s" % (name, kv_bytes / t1 / 1e9, tb, flops / tb / 1e9, rs, rb))


if __name__ == "__main__":
    main()
