#!/usr/bin/python3
"""Bad input must give one clear line naming what is wrong and exit status 2
on every rank, with no hang and no HDF5 error stack.

usage: malformed.py KVSTREAM NP WORKDIR [PART/PARTS]

With PART/PARTS (e.g. 0/2) only every PARTS-th check from the PART-th runs,
so that ctest -j runs the parts side by side."""
import os
import shutil
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, nprocs, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
part, parts = map(int, (sys.argv[4] if len(sys.argv) > 4 else "0/1").split("/"))
os.makedirs(work, exist_ok=True)
S, n, m, d, dv = 2, 600, 8, 8, 4
rng = np.random.default_rng(1)


def good(path, **over):
    """A valid small trace; keyword arguments replace or (None) drop parts."""
    parts = dict(keys=rng.standard_normal((S, n, d)).astype(np.float32),
                 values=rng.standard_normal((S, n, dv)).astype(np.float32),
                 queries=rng.standard_normal((S, m, d)).astype(np.float32),
                 query_pos=np.linspace(n // m, n, m).astype(np.int64))
    attrs = dict(format="kvtrace", version=1)
    for k, v in over.items():
        if k.startswith("attr_"):
            attrs[k[5:]] = v
        else:
            parts[k] = v
    with h5py.File(path, "w") as f:
        for k, v in parts.items():
            if v is None:
                continue
            if isinstance(v, str) and v == "group":
                f.create_group(k)
            elif getattr(v, "ndim", 0) >= 2:
                f.create_dataset(k, data=v, chunks=(1,) + (min(100, v.shape[1]),) + v.shape[2:])
            else:
                f.create_dataset(k, data=v)
        for k, v in attrs.items():
            if v is not None:
                f.attrs[k] = v
    return path


def keys_with(bad_value, at):
    k = rng.standard_normal((S, n, d)).astype(np.float32)
    k[at] = bad_value
    return k


def P(name):
    return os.path.join(work, name + ".h5")


cases = []


def case(name, path, expect, cmd="replay"):
    cases.append((name, path, expect, cmd))


case("missing file", os.path.join(work, "does-not-exist.h5"), "no such file")
with open(P("text"), "w") as f:
    f.write("this is not HDF5\n" * 100)
case("not HDF5", P("text"), "not an HDF5 file")
good(P("whole"))
size = os.path.getsize(P("whole"))
shutil.copy(P("whole"), P("truncated"))
with open(P("truncated"), "r+b") as f:
    f.truncate(size // 2)
case("truncated", P("truncated"), "truncated or corrupt")
case("missing values", good(P("novalues"), values=None), "dataset /values is missing")
case("missing query_pos", good(P("nopos"), query_pos=None), "dataset /query_pos is missing")
case("keys rank 2", good(P("rank2"), keys=np.zeros((S, n * d), np.float32)), "/keys has rank 2, expected 3")
case("values streams", good(P("vs"), values=np.zeros((S + 1, n, dv), np.float32)), "streams, tokens must agree")
case("values tokens", good(P("vt"), values=np.zeros((S, n - 1, dv), np.float32)), "streams, tokens must agree")
case("queries dim", good(P("qd"), queries=np.zeros((S, m, d + 1), np.float32)), "streams, dim must agree")
case("query_pos length", good(P("ql"), query_pos=np.arange(1, m).astype(np.int64)), "/query_pos has 7 entries")
case("query_pos zero", good(P("q0"), query_pos=np.arange(0, m).astype(np.int64)), "/query_pos[0] = 0 is out of range")
case("query_pos > n", good(P("qn"), query_pos=np.full(m, n + 1, np.int64)), "is out of range [1, 600]")
case("query_pos decreasing", good(P("qdec"), query_pos=np.array([5, 9, 8, 10, 11, 12, 13, 14], np.int64)),
     "/query_pos decreases at index 2")
case("query_pos float", good(P("qf"), query_pos=np.arange(1, m + 1).astype(np.float64)), "/query_pos has the wrong type")
case("NaN in a late chunk", good(P("nan"), keys=keys_with(np.nan, (1, n - 3, 2))), "/keys[1, 597, 2] is not finite")
case("Inf in values", good(P("inf"), values=np.where(np.arange(dv) == 1, np.inf, 1.0) * np.ones((S, n, dv), np.float32)),
     "/values[0, 0, 1] is not finite")
case("NaN in queries", good(P("qnan"), queries=np.full((S, m, d), np.nan, np.float32)), "/queries[0, 0, 0] is not finite")
case("float64 overflow", good(P("big"), keys=np.full((S, n, d), 1e300)), "is not finite")
case("wrong format", good(P("fmt"), attr_format="npz"), "'format' is 'npz', expected 'kvtrace'")
case("missing format", good(P("nofmt"), attr_format=None), "root attribute 'format' is missing")
case("version 2", good(P("v2"), attr_version=2), "kvtrace version 2 is not supported")
case("version string", good(P("vstr"), attr_version="1"), "attribute 'version' must be an integer")
case("int keys", good(P("ikeys"), keys=np.zeros((S, n, d), np.int32)), "/keys has the wrong type")
# float16 is a valid trace type; its inf must still be refused with the index
case("float16 inf keys", good(P("hkeys"), keys=np.full((S, n, d), np.inf, np.float16)), "/keys[0, 0, 0] is not finite")
case("keys is a group", good(P("gkeys"), keys="group"), "/keys is not a dataset")
case("negative scale", good(P("scale"), attr_scale=-1.0), "attribute 'scale' = -1 must be finite and > 0")
# a late chunk with damaged bytes (gzip-compressed, so the read fails): only
# the rank that owns it sees the problem; all ranks must stop with its message
good(P("corruptchunk"))
with h5py.File(P("corruptchunk"), "w") as f:
    for k, shape in (("keys", (S, n, d)), ("values", (S, n, dv)), ("queries", (S, m, d))):
        f.create_dataset(k, data=rng.standard_normal(shape).astype(np.float32),
                         chunks=(1, min(100, shape[1]), shape[2]), compression="gzip")
    f.create_dataset("query_pos", data=np.linspace(n // m, n, m).astype(np.int64))
    f.attrs["format"] = "kvtrace"
    f.attrs["version"] = 1
    info = f["keys"].id.get_chunk_info_by_coord((1, 500, 0))
    off, size = info.byte_offset, info.size
with open(P("corruptchunk"), "r+b") as f:
    f.seek(off + size // 3)
    f.write(b"\xff" * (size // 3))
case("corrupt late chunk", P("corruptchunk"), "/keys rows [500, 600) cannot be read (corrupt or truncated data)")

# files the fuzzer produced (tests/data): HDF5 itself fails on them, and once
# made parallel H5Fopen hang on 2 ranks
here = os.path.dirname(os.path.abspath(__file__))
case("fuzz: huge allocation in header", os.path.join(here, "data", "fuzz-hdf5-huge-alloc.h5"), "truncated or corrupt")
case("fuzz: bad header", os.path.join(here, "data", "fuzz-hdf5-bad-header.h5"), "truncated or corrupt")
case("info on fuzz file", os.path.join(here, "data", "fuzz-hdf5-huge-alloc.h5"), "truncated or corrupt", cmd="info")
case("info on NaN", P("nan"), "/keys[1, 597, 2] is not finite", cmd="info")
case("info on truncated", P("truncated"), "truncated or corrupt", cmd="info")

# options
opt_cases = [
    ("unknown option", ["replay", P("whole"), "--bogus"], "unknown option '--bogus'"),
    ("batch 0", ["replay", P("whole"), "--batch", "0"], "--batch: 0 is out of range"),
    ("batch text", ["replay", P("whole"), "--batch", "lots"], "--batch: 'lots' is not an integer"),
    ("unknown method", ["replay", P("whole"), "--methods", "exact,nosuch"], "unknown method 'nosuch'"),
    ("bad method param", ["replay", P("whole"), "--methods", "exact:foo=1"], "unknown parameter 'foo'"),
    ("no trace", ["replay", "--methods", "exact"], "expected exactly one trace file"),
    ("bad semantics", ["replay", P("whole"), "--semantics", "sideways"], "--semantics: 'sideways'"),
    ("window without semantics", ["replay", P("whole"), "--window", "4"], "--window only applies"),
    ("unwritable results", ["replay", P("whole"), "-o", "/nonexistent-dir/r.h5"], "cannot create results file"),
    ("max-memory too small", ["replay", P("whole"), "--methods", "exact,window:W=10", "--max-memory", "4K"],
     "--max-memory 4096: this rank would need up to"),
    ("max-memory not a size", ["replay", P("whole"), "--max-memory", "lots"], "--max-memory: 'lots' is not a size"),
    ("gen negative tokens", ["gen", "--tokens", "-5", "-o", P("x")], "--tokens: -5 is out of range"),
    ("gen unknown kind", ["gen", "--kind", "zebra", "-o", P("x")], "unknown --kind 'zebra'"),
    ("gen no output", ["gen", "--tokens", "10"], "missing -o FILE"),
    ("gen option without value", ["gen", "--tokens"], "needs a value"),
    ("unknown command", ["frobnicate"], "unknown command 'frobnicate'"),
]

passed = failed = 0


def check(name, args, expect):
    global passed, failed
    r = run(mpi_cmd(nprocs, exe, *args), timeout=60)
    ours = [l for l in r.stderr.splitlines() if l.startswith("kvstream")]
    problems = []
    if r.returncode != 2:
        problems.append("exit status %d, expected 2" % r.returncode)
    if len(ours) != 1:
        problems.append("%d kvstream lines on stderr, expected 1: %r" % (len(ours), ours))
    elif expect not in ours[0]:
        problems.append("message %r lacks %r" % (ours[0], expect))
    if "HDF5-DIAG" in r.stderr or "HDF5-DIAG" in r.stdout:
        problems.append("HDF5 error stack printed")
    if problems:
        failed += 1
        print("FAIL [np=%d] %s: %s" % (nprocs, name, "; ".join(problems)))
        print("  stderr: " + r.stderr.strip().replace("\n", "\n  stderr: "))
    else:
        passed += 1
        print("ok   [np=%d] %s: %s" % (nprocs, name, ours[0]))


checks = [(name, ["replay", path, "--methods", "exact", "--quiet", "--shard-chunk", "100"] if cmd == "replay"
           else ["info", path], expect) for name, path, expect, cmd in cases] + list(opt_cases)
for name, args, expect in checks[part::parts]:
    check(name, args, expect)
# a limit that fits runs normally
if part == parts - 1:
    r = run(mpi_cmd(nprocs, exe, "replay", P("whole"), "--methods", "exact,window:W=10", "--max-memory", "1G", "--quiet"))
    if r.returncode != 0:
        failed += 1
        print("FAIL [np=%d] --max-memory 1G refused a small run: %s" % (nprocs, r.stderr))
    else:
        passed += 1
        print("ok   [np=%d] --max-memory 1G accepts a small run" % nprocs)
print("malformed: %d passed, %d failed" % (passed, failed))
sys.exit(1 if failed else 0)
