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

    /usr/bin/python3 scripts/bench-peers.py --ggml SRC_DIR [--ggml-build DIR]
        [--methods build/bench/bench_methods] [--log2n-list 16,20] [--d 128]
        [--reps 7] [--threads-list 1,2]

ggml (the tensor library under llama.cpp) instead: its CPU flash attention,
ggml_flash_attn_ext, with f32, f16, q8_0 and q4_0 K/V, beside kvstream's
exact, kivi:bits=8/4/2 and qjl on bench_methods' shapes (one query over n
tokens; 64 queries at spread positions in one call).  SRC_DIR is a ggml
source checkout the user provides and has built with ggml's own CMake (its
README; Release, CPU backend): nothing of ggml is vendored here, fetched or
built by this script.  Its libraries are looked for under --ggml-build
(default SRC_DIR/build).  bench/peer_ggml.c is compiled against that
checkout's headers and libraries into the build directory and run once per
log2 n; bench_methods runs once per thread count (OMP_NUM_THREADS).  One
table: shape, threads, ggml type, us/query, kvstream method, us/query, and
the ratio ggml us / kvstream us (> 1: kvstream faster); both sides are
means (ggml over --reps calls; bench_methods over its 16 single queries, and
its one 64-query call).
"""
import argparse
import glob
import os
import re
import shutil
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
    p.add_argument("--ggml", metavar="SRC_DIR", help="a built ggml source checkout: time ggml_flash_attn_ext instead")
    p.add_argument("--ggml-build", metavar="DIR", help="ggml's build directory (default SRC_DIR/build)")
    p.add_argument("--methods", default="build/bench/bench_methods", help="bench_methods binary (with --ggml)")
    p.add_argument("--log2n-list", default="16,20", help="with --ggml: comma-separated log2 n (default 16,20)")
    p.add_argument("--threads-list", default="1,2", help="with --ggml: comma-separated thread counts (default 1,2)")
    a = p.parse_args()
    if not 10 <= a.log2n <= 26 or not 1 <= a.d <= 4096 or a.reps < 1:
        p.error("need 10 <= log2n <= 26, 1 <= d <= 4096, reps >= 1")
    if a.ggml:
        try:
            a.log2ns = [int(x) for x in a.log2n_list.split(",")]
            a.threads_ggml = [int(x) for x in a.threads_list.split(",")]
        except ValueError:
            p.error("--log2n-list and --threads-list take comma-separated integers")
        if not all(8 <= x <= 24 for x in a.log2ns) or not all(t >= 1 for t in a.threads_ggml):
            p.error("--log2n-list: 8..24 each (bench_methods' range); --threads-list: >= 1 each")
        if a.d % 32:
            p.error("--d: a multiple of 32 with --ggml (the q8_0 / q4_0 block)")
    return a


# --ggml: ggml_flash_attn_ext beside bench_methods' exact / kivi / qjl

GGML_TYPES = ("f32", "f16", "q8_0", "q4_0")
# (ggml type, kvstream method) rows of the table: like against like, then the
# two kvstream methods below 4 bits against ggml's smallest K/V type
# (f16 against exact holding half: bench_methods then rounds its stream to
# half values for every method, as a float16 trace would give them)
GGML_PAIRS = (("f32", "exact"), ("f16", "exact:store=f16"), ("q8_0", "kivi:bits=8"), ("q4_0", "kivi:bits=4"),
              ("q4_0", "kivi:bits=2"), ("q4_0", "qjl"))


def refuse(msg):
    print("bench-peers: " + msg, file=sys.stderr)
    sys.exit(2)


def ggml_checkout(src):
    """SRC_DIR's include dir, or exit 2 with one line"""
    inc = os.path.join(src, "include")
    h = os.path.join(inc, "ggml.h")
    if not (os.path.isfile(h) and os.path.isfile(os.path.join(inc, "ggml-cpu.h"))):
        refuse("%s is not a ggml source checkout (no include/ggml.h and include/ggml-cpu.h)" % src)
    with open(h, errors="replace") as f:
        if "ggml_flash_attn_ext" not in f.read():
            refuse("%s: this ggml has no ggml_flash_attn_ext (too old a checkout)" % src)
    return inc


def ggml_libs(build):
    """the directories holding libggml, libggml-base and libggml-cpu under `build`, or exit 2"""
    dirs = []
    for lib in ("ggml", "ggml-base", "ggml-cpu"):
        found = sorted(glob.glob(os.path.join(build, "**", "lib%s.so" % lib), recursive=True) +
                       glob.glob(os.path.join(build, "**", "lib%s.a" % lib), recursive=True))
        if not found:
            refuse("no lib%s.so or .a under %s: build ggml there first with its own CMake (Release, CPU backend; "
                   "see its README), or give --ggml-build" % (lib, build))
        dirs.append(os.path.dirname(found[0]))
    return sorted(set(dirs))


def ggml_commit(src):
    r = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown (not a git work tree)"


def run_ggml(a):
    src = os.path.abspath(a.ggml)
    inc = ggml_checkout(src)
    build = os.path.abspath(a.ggml_build or os.path.join(src, "build"))
    libdirs = ggml_libs(build)
    log2ns, threads = a.log2ns, a.threads_ggml
    if not os.access(a.methods, os.X_OK):
        refuse("no bench_methods at %s (build kvstream first, or give --methods)" % a.methods)
    harness = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "peer_ggml.c"))
    exe = os.path.join(build, "peer_ggml")
    cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
    cmd = [cc, "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-o", exe, harness, "-I", inc]
    for dname in libdirs:
        cmd += ["-L", dname, "-Wl,-rpath," + dname]
    cmd += ["-lggml", "-lggml-cpu", "-lggml-base", "-lm", "-lpthread", "-fopenmp"]
    print("ggml %s at %s, libraries from %s" % (ggml_commit(src), src, ", ".join(libdirs)))
    print("compiling", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    peer, kv = {}, {}  # (log2n, threads, type or method, nq) -> us/query
    for lg in log2ns:
        cmd = [exe, str(lg), str(a.d), ",".join(map(str, threads)), str(a.reps), ",".join(GGML_TYPES)]
        print("running", " ".join(cmd), flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        print(out.rstrip(), flush=True)
        for line in out.splitlines():
            m = re.match(r"ggml (\S+)\s+(\d+)q (\d+) threads best\s+([\d.]+) mean\s+([\d.]+) us/query", line)
            if m:  # the mean, as bench_methods reports
                peer[(lg, int(m.group(3)), m.group(1), int(m.group(2)))] = float(m.group(5))
        methods = ",".join(["exact"] + sorted({m for _, m in GGML_PAIRS if m != "exact"}))
        for t in threads:
            cmd = [a.methods, str(lg), str(a.d), methods]
            print("running OMP_NUM_THREADS=%d %s" % (t, " ".join(cmd)), flush=True)
            env = dict(os.environ, OMP_NUM_THREADS=str(t))
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            print(out.rstrip(), flush=True)
            for line in out.splitlines():
                f = line.split()
                if len(f) > 10 and f[4] == "|" and f[8] == "|":
                    kv[(lg, t, f[0], 1)] = float(f[5])
                    kv[(lg, t, f[0], 64)] = float(f[9])
    print("\n| shape | threads | ggml K/V | ggml us/q | kvstream | kvstream us/q | ggml / kvstream |")
    print("|---|---|---|---|---|---|---|")
    for lg in log2ns:
        for nq in (1, 64):
            for t in threads:
                for ty, me in GGML_PAIRS:
                    g, k = peer.get((lg, t, ty, nq)), kv.get((lg, t, me, nq))
                    print("| 2^%d, %dq | %d | %s | %s | %s | %s | %s |" % (
                        lg, nq, t, ty, "%.1f" % g if g else "-", me, "%.1f" % k if k else "-",
                        "%.2f" % (g / k) if g and k else "-"))


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
    if a.ggml:
        return run_ggml(a)
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
