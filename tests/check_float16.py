#!/usr/bin/python3
"""float16 (IEEE half) traces: writing, reading, validation, conversion.

usage: check_float16.py PART KVSTREAM WORKDIR
PART is one of
  gen       gen --dtype float16: h5py sees float16, the values are numpy's
            round-to-nearest-even of the float32 trace, identical for 1 and 3
            ranks, `info` says valid; a value beyond +-65504 is refused
  exact     exact replay of a float16 trace (1 and 3 ranks) vs a float64
            reference from the float16 values (exact in float32 after upcast,
            so the tolerance of check_exact.py, 2e-6, holds unchanged)
  bitwise   a float16 trace and a float32 trace of the same values replay to
            bitwise identical outputs (also with values holding every finite
            half, subnormals and +-65504 included, and a big-endian half file)
  nonfinite inf/NaN written by h5py into float16 keys/values/queries/
            model_outputs: exit 2, one line naming dataset[stream, row, col]
            (1 and 2 ranks)
  layout    2-byte floats that are not IEEE half (bfloat16-like, wrong bias)
            are refused with one line saying to upcast
  npz       analysis/npz_to_kvtrace.py --dtype float16 / --bfloat16-bits
  record    record --dtype float16 (extra argument: the model): float16
            datasets holding the float32 recording rounded to nearest even,
            /model_outputs float32, replay close to the model's outputs
"""
import os
import subprocess
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, reference_outputs, rel, run

part, exe, work = sys.argv[1], sys.argv[2], sys.argv[3]
work = os.path.join(work, "float16_" + part)
os.makedirs(work, exist_ok=True)
HERE = os.path.dirname(os.path.abspath(__file__))
CONVERTER = os.path.join(HERE, "..", "analysis", "npz_to_kvtrace.py")
checks = 0


def ok(cond, msg):
    global checks
    checks += 1
    if not cond:
        fail(msg)


def P(name):
    return os.path.join(work, name)


GEN = ["--kind", "clustered", "--clusters", "5", "--spread", "0.5", "--streams", "2", "--tokens", "3000",
       "--dim", "16", "--dv", "8", "--queries", "40", "--chunk", "500", "--seed", "3"]


def gen(out, np_=1, *extra):
    r = run(mpi_cmd(np_, exe, "gen", *GEN, "-o", out, *extra), timeout=300)
    ok(r.returncode == 0, "gen %s (np=%d) failed: %s" % (" ".join(extra), np_, r.stderr))
    return out


def replay(trace, np_, out):
    r = run(mpi_cmd(np_, exe, "replay", trace, "--methods", "exact", "--save-outputs", "--quiet", "-o", out), timeout=300)
    ok(r.returncode == 0, "replay %s np=%d failed: %s" % (trace, np_, r.stderr))
    with h5py.File(out, "r") as f:
        return f["methods/exact/outputs"][...]


def refused(args, np_, expect):
    """exit 2, exactly one kvstream line, containing expect, no HDF5 stack"""
    r = run(mpi_cmd(np_, exe, *args), timeout=120)
    ours = [l for l in r.stderr.splitlines() if l.startswith("kvstream")]
    ok(r.returncode == 2, "%s (np=%d): exit %d, expected 2: %s" % (" ".join(args), np_, r.returncode, r.stderr))
    ok(len(ours) == 1 and expect in ours[0], "%s (np=%d): expected one line with %r, got %r" % (" ".join(args), np_, expect, ours))
    ok("HDF5-DIAG" not in r.stderr + r.stdout, "HDF5 error stack printed")
    print("ok   [np=%d] %s" % (np_, ours[0]))


def copy_as(src, dst, dtype, **replace):
    """Copy a trace with keys/values/queries (and model_outputs) stored as dtype."""
    with h5py.File(src, "r") as a, h5py.File(dst, "w") as b:
        for k, v in a.attrs.items():
            b.attrs[k] = v
        for name in a:
            x = replace.get(name, a[name][...])
            ds = a[name]
            if name in ("keys", "values", "queries", "model_outputs"):
                x = np.asarray(x).astype(dtype)
            b.create_dataset(name, data=x, chunks=ds.chunks)
    return dst


if part == "gen":
    t1 = gen(P("g16_np1.h5"), 1, "--dtype", "float16")
    t3 = gen(P("g16_np3.h5"), 3, "--dtype", "float16")
    t32 = gen(P("g32.h5"), 2)
    t32d = gen(P("g32_default.h5"), 1, "--dtype", "float32")
    with h5py.File(t1, "r") as a, h5py.File(t3, "r") as b, h5py.File(t32, "r") as c, h5py.File(t32d, "r") as e:
        for name in ("keys", "values", "queries"):
            x = a[name][...]
            ok(x.dtype == np.float16, "/%s is %s, expected float16" % (name, x.dtype))
            ok(c[name].dtype == np.float32 and e[name].dtype == np.float32, "float32 gen wrote %s" % c[name].dtype)
            ok(np.array_equal(x.view(np.uint16), b[name][...].view(np.uint16)), "/%s differs between 1 and 3 ranks" % name)
            want = c[name][...].astype(np.float16)
            ok(np.array_equal(x.view(np.uint16), want.view(np.uint16)),
               "/%s is not the round-to-nearest-even float16 of the float32 trace (%d of %d differ)"
               % (name, int((x.view(np.uint16) != want.view(np.uint16)).sum()), x.size))
        ok(np.array_equal(a["query_pos"][...], c["query_pos"][...]), "query_pos differs")
    r = run(mpi_cmd(2, exe, "info", t1))
    ok(r.returncode == 0 and "verdict: valid" in r.stdout and "float16" in r.stdout, "info on float16 trace: %s %s" % (r.stdout, r.stderr))
    for np_ in (1, 2):
        refused(["gen", "--kind", "sphere", "--radius", "70000", "--tokens", "600", "--dim", "4", "--queries", "3",
                 "--chunk", "100", "--dtype", "float16", "-o", P("big%d.h5" % np_)], np_, "does not fit in float16")
    refused(["gen", "--kind", "gaussian", "--tokens", "10", "--dim", "4", "--queries", "3", "--dtype", "bfloat16",
             "-o", P("bad.h5")], 1, "--dtype: 'bfloat16' is not one of float32, float16")

elif part == "exact":
    t = gen(P("e16.h5"), 1, "--dtype", "float16")
    Z, _, _ = reference_outputs(t)  # h5py: float16 -> float64, exact
    outs = []
    for np_ in (1, 3):
        o = replay(t, np_, P("e16_np%d_results.h5" % np_))
        e = rel(o.astype(np.float64), Z)
        print("np=%d: max rel err vs float64 reference %.3g" % (np_, e.max()))
        ok(e.max() <= 2e-6, "np=%d: rel err %.3g > 2e-6" % (np_, e.max()))
        outs.append(o)
    a = rel(outs[1].astype(np.float64), outs[0].astype(np.float64)).max()
    ok(a <= 1e-6, "1 and 3 ranks disagree by %.3g" % a)

elif part == "bitwise":
    t16 = gen(P("b16.h5"), 1, "--dtype", "float16")
    t32 = copy_as(t16, P("b32.h5"), np.float32)
    GEN[GEN.index("--tokens") + 1] = "4000"  # 2 x 4000 x 8 values >= 63488 finite halves
    t16b = gen(P("b16b.h5"), 1, "--dtype", "float16")
    # every finite half value (subnormals, +-65504) in the values of one trace
    allh = np.arange(65536, dtype=np.uint16).view(np.float16)
    fin = allh[np.isfinite(allh)]
    rng = np.random.default_rng(5)
    V = np.zeros(2 * 4000 * 8, np.float16)
    V[: fin.size] = rng.permutation(fin)
    t16v = copy_as(t16b, P("b16v.h5"), np.float16, values=V.reshape(2, 4000, 8))
    t32v = copy_as(t16v, P("b32v.h5"), np.float32)
    with h5py.File(t16v, "r") as f, h5py.File(P("b16be.h5"), "w") as g:  # big-endian half
        for k, v in f.attrs.items():
            g.attrs[k] = v
        for name in f:
            x = f[name][...]
            dt = ">f2" if x.dtype == np.float16 else x.dtype
            g.create_dataset(name, data=x.astype(dt), dtype=dt, chunks=f[name].chunks)
    with h5py.File(P("b16be.h5"), "r") as g:
        ok(g["values"].id.get_type().get_order() == h5py.h5t.ORDER_BE, "big-endian file is not big-endian")
    for np_ in (1, 2):
        pairs = ((t16, t32), (t16v, t32v), (P("b16be.h5"), t32v))
        for a, b in pairs:
            oa = replay(a, np_, a + ".np%d.res.h5" % np_)
            ob = replay(b, np_, b + ".np%d.res.h5" % np_)
            ok(np.all(np.isfinite(oa)), "non-finite outputs from %s" % a)
            ok(np.array_equal(oa.view(np.uint32), ob.view(np.uint32)),
               "np=%d: %s and %s outputs differ (max %.3g)" % (np_, a, b, np.abs(oa - ob).max()))
            print("ok   [np=%d] %s == %s bitwise" % (np_, os.path.basename(a), os.path.basename(b)))

elif part == "nonfinite":
    S, n, m, d, dv = 2, 600, 8, 8, 4
    rng = np.random.default_rng(2)

    def trace(path, **bad):
        parts = dict(keys=rng.standard_normal((S, n, d)), values=rng.standard_normal((S, n, dv)),
                     queries=rng.standard_normal((S, m, d)), model_outputs=rng.standard_normal((S, m, dv)))
        parts = {k: v.astype(np.float16) for k, v in parts.items()}
        for k, (idx, val) in bad.items():
            parts[k][idx] = val
        with h5py.File(path, "w") as f:
            f.attrs["format"] = "kvtrace"
            f.attrs["version"] = 1
            for k, v in parts.items():
                f.create_dataset(k, data=v, chunks=(1, min(100, v.shape[1]), v.shape[2]))
            f.create_dataset("query_pos", data=np.linspace(n // m, n, m).astype(np.int64))
        return path

    good = trace(P("good.h5"))
    r = run(mpi_cmd(2, exe, "replay", good, "--methods", "exact", "--quiet", "--shard-chunk", "100"))
    ok(r.returncode == 0, "float16 trace with float16 model_outputs refused: %s" % r.stderr)
    cases = [(trace(P("kinf.h5"), keys=((1, 534, 5), np.inf)), "/keys[1, 534, 5] is not finite (inf)"),
             (trace(P("vninf.h5"), values=((0, 77, 3), -np.inf)), "/values[0, 77, 3] is not finite (-inf)"),
             (trace(P("qnan.h5"), queries=((1, 6, 2), np.nan)), "/queries[1, 6, 2] is not finite"),
             (trace(P("znan.h5"), model_outputs=((0, 5, 1), np.nan)), "/model_outputs[0, 5, 1] is not finite")]
    for np_ in (1, 2):
        for path, expect in cases:
            refused(["replay", path, "--methods", "exact", "--quiet", "--shard-chunk", "100"], np_, expect)
        refused(["info", cases[0][0]], np_, "/keys[1, 534, 5] is not finite")

elif part == "layout":
    S, n, m, d = 1, 50, 4, 4

    def custom(path, fields, ebias, what="keys"):
        with h5py.File(path, "w") as f:
            f.attrs["format"] = "kvtrace"
            f.attrs["version"] = 1
            for k, shape in (("keys", (S, n, d)), ("values", (S, n, d)), ("queries", (S, m, d))):
                if k != what:
                    f.create_dataset(k, data=np.ones(shape, np.float16))
                    continue
                t = h5py.h5t.IEEE_F32LE.copy()
                t.set_fields(*fields)
                t.set_size(2)
                t.set_ebias(ebias)
                ds = h5py.h5d.create(f.id, k.encode(), t, h5py.h5s.create_simple(shape))
                bits = np.full(shape, 0x3F80, np.uint16)  # 1.0 as bfloat16
                ds.write(h5py.h5s.ALL, h5py.h5s.ALL, bits, mtype=t)
            f.create_dataset("query_pos", data=np.arange(1, m + 1, dtype=np.int64) * (n // m))
        return path

    bf = custom(P("bf16.h5"), (15, 7, 8, 0, 7), 127)
    bias = custom(P("bias14.h5"), (15, 10, 5, 0, 10), 14, "queries")
    with h5py.File(bf, "r") as f:
        ty = f["keys"].id.get_type()
        ok(ty.get_class() == h5py.h5t.FLOAT and ty.get_size() == 2 and ty.get_fields()[3:] == (0, 7),
           "custom type not as built: %s" % (ty.get_fields(),))
    for np_ in (1, 2):
        refused(["replay", bf, "--methods", "exact", "--quiet"], np_,
                "/keys is a 2-byte float that is not IEEE half precision (exponent 8 bits, bias 127, mantissa 7 bits; "
                "bfloat16?): upcast it to float32")
        refused(["info", bias], np_, "/queries is a 2-byte float that is not IEEE half precision (exponent 5 bits, bias 14")

elif part == "npz":
    def convert(npz, out, *extra):
        return subprocess.run([sys.executable, CONVERTER, npz, "-o", out, *extra], capture_output=True, text=True)

    S, n, m, d, dv = 2, 300, 10, 8, 4
    rng = np.random.default_rng(9)
    K = rng.standard_normal((S, n, d)).astype(np.float16)
    V = rng.standard_normal((S, n, dv)).astype(np.float16)
    Q = rng.standard_normal((S, m, d)).astype(np.float16)
    qp = np.linspace(n // m, n, m).astype(np.int64)
    np.savez(P("h.npz"), keys=K, values=V, queries=Q, query_pos=qp, model_outputs=np.ones((S, m, dv), np.float16))
    for dt, want in (("float16", np.float16), ("float32", np.float32)):
        out = P("h_%s.h5" % dt)
        r = convert(P("h.npz"), out, "--dtype", dt, "--chunk", "64")
        ok(r.returncode == 0, "convert --dtype %s: %s" % (dt, r.stderr))
        with h5py.File(out, "r") as f:
            for name, x in (("keys", K), ("values", V), ("queries", Q)):
                y = f[name][...]
                ok(y.dtype == want, "%s: /%s is %s" % (dt, name, y.dtype))
                ok(np.array_equal(y.astype(np.float16).view(np.uint16), x.view(np.uint16)) and
                   np.array_equal(y.astype(np.float32), x.astype(np.float32)), "%s: /%s values changed" % (dt, name))
            ok(f["model_outputs"].dtype == np.float32, "model_outputs is %s" % f["model_outputs"].dtype)
        r = run(mpi_cmd(1, exe, "info", out))
        ok(r.returncode == 0 and "verdict: valid" in r.stdout, "info %s: %s" % (out, r.stderr))
    # float32 input asked as float16: numpy's rounding; both traces replay the same
    K32 = rng.standard_normal((S, n, d)).astype(np.float32)
    np.savez(P("f.npz"), keys=K32, values=V.astype(np.float32), queries=Q.astype(np.float32), query_pos=qp)
    r = convert(P("f.npz"), P("f16.h5"), "--dtype", "float16")
    ok(r.returncode == 0, "convert float32 -> float16: %s" % r.stderr)
    with h5py.File(P("f16.h5"), "r") as f:
        ok(np.array_equal(f["keys"][...].view(np.uint16), K32.astype(np.float16).view(np.uint16)), "float32 -> float16 rounding")
    # beyond the float16 range: refused, no file left
    K32[1, 17, 3] = 7e4
    np.savez(P("big.npz"), keys=K32, values=V, queries=Q, query_pos=qp)
    r = convert(P("big.npz"), P("big.h5"), "--dtype", "float16")
    ok(r.returncode == 2 and "beyond the float16 range" in r.stderr and "[1, 17, 3]" in r.stderr and len(r.stderr.splitlines()) == 1,
       "overflow not refused: %d %s" % (r.returncode, r.stderr))
    ok(not os.path.exists(P("big.h5")), "output left behind after an error")
    r = convert(P("big.npz"), P("big32.h5"))
    ok(r.returncode == 0, "float32 default refused 7e4: %s" % r.stderr)
    # bfloat16 as raw uint16 bits: upcast exactly to float32
    Kb = (rng.standard_normal((S, n, d)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    Vb = (rng.standard_normal((S, n, dv)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    Qb = (rng.standard_normal((S, m, d)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    np.savez(P("bf.npz"), keys=Kb, values=Vb, queries=Qb, query_pos=qp)
    r = convert(P("bf.npz"), P("bf.h5"), "--bfloat16-bits")
    ok(r.returncode == 0, "--bfloat16-bits: %s" % r.stderr)
    with h5py.File(P("bf.h5"), "r") as f:
        for name, x in (("keys", Kb), ("values", Vb), ("queries", Qb)):
            y = f[name][...]
            ok(y.dtype == np.float32 and np.array_equal(y.view(np.uint32), x.astype(np.uint32) << 16),
               "--bfloat16-bits: /%s not the exact upcast" % name)
    np.savez(P("bfv.npz"), keys=Kb.view("V2"), values=Vb, queries=Qb, query_pos=qp)  # ml_dtypes as np.load sees it
    r = convert(P("bfv.npz"), P("bfv.h5"), "--bfloat16-bits")
    ok(r.returncode == 0, "--bfloat16-bits with V2 arrays: %s" % r.stderr)
    with h5py.File(P("bfv.h5"), "r") as f:
        ok(np.array_equal(f["keys"][...].view(np.uint32), Kb.astype(np.uint32) << 16), "V2 bfloat16 keys")
    np.savez(P("bfbad.npz"), keys=K32, values=Vb, queries=Qb, query_pos=qp)
    r = convert(P("bfbad.npz"), P("bfbad.h5"), "--bfloat16-bits")
    ok(r.returncode == 2 and "expected uint16 raw bfloat16 bits" in r.stderr, "--bfloat16-bits float32 input: %s" % r.stderr)
    r = subprocess.run([sys.executable, CONVERTER, "--help"], capture_output=True, text=True)
    ok("--dtype" in r.stdout and "--bfloat16-bits" in r.stdout and "float32" in r.stdout, "--help lacks the dtype options")
elif part == "record":
    model = sys.argv[4]
    files = {}
    for dt in ("float32", "float16"):
        files[dt] = P("rec_%s.h5" % dt)
        r = run(mpi_cmd(1, exe, "record", "--model", model, "--tokens", "300", "--chunk", "128", "--dtype", dt,
                        "-o", files[dt]), timeout=300)
        ok(r.returncode == 0, "record --dtype %s: %s" % (dt, r.stderr))
    with h5py.File(files["float32"], "r") as a, h5py.File(files["float16"], "r") as b:
        for name in ("keys", "values", "queries"):
            ok(b[name].dtype == np.float16, "record: /%s is %s" % (name, b[name].dtype))
            ok(np.array_equal(b[name][...].view(np.uint16), a[name][...].astype(np.float16).view(np.uint16)),
               "record: /%s is not the float32 recording rounded to float16" % name)
        ok(b["model_outputs"].dtype == np.float32, "record: /model_outputs is %s" % b["model_outputs"].dtype)
    r = run(mpi_cmd(2, exe, "replay", files["float16"], "--methods", "exact", "--quiet"), timeout=300)
    ok(r.returncode == 0 and "max rel err" in r.stdout, "replay of the float16 recording: %s" % r.stderr)
    err = float(r.stdout.split("max rel err")[1].split(",")[0])
    ok(err < 0.05, "float16 recording: exact vs model outputs %.3g" % err)
else:
    fail("unknown part %s" % part)
print("check_float16 %s: %d passed, 0 failed" % (part, checks))
