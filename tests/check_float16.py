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
  store     exact's store=f16 (half keys and values): outputs bitwise those of
            store=f32 on the same float16 trace at 1 and 2 ranks, one query at
            a time and in batches of 64 (single-query, few-query and batched
            kernels; vector and scalar widths; several token slices), and under
            window-unmasked-values; memory_bytes minus the run table halves,
            and so does read_bytes_per_query;
            auto is f16 on a float16 trace and f32 on a float32 one; store=f16
            on a float32 trace is refused with one line; a replay stopped and
            resumed from its checkpoint gives the same bits
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

elif part == "store":
    SPECS = "exact:store=f32,name=e32,exact:store=f16,name=e16,exact,name=eauto"

    def store_replay(trace, np_, out, *extra):
        r = run(mpi_cmd(np_, exe, "replay", trace, "--methods", SPECS, "--save-outputs", "--quiet", "-o", out, *extra),
                timeout=300)
        ok(r.returncode == 0, "replay %s np=%d %s failed: %s" % (trace, np_, extra, r.stderr))
        with h5py.File(out, "r") as f:
            rb = {g: float(f["methods"][g].attrs["read_bytes_per_query"]) for g in f["methods"]}
            ok(rb["e16"] * 2 == rb["e32"] > 0, "read_bytes_per_query: f16 %g, f32 %g (expected half)" % (rb["e16"], rb["e32"]))
            return {g: (f["methods"][g]["outputs"][...], int(f["methods"][g].attrs["memory_bytes"])) for g in f["methods"]}

    # d = 16, dv = 8 (scalar P.V width); d = dv = 32 over 20000 tokens (vector widths, three 8192-token slices)
    big = [a for a in GEN]
    for k, v in (("--tokens", "20000"), ("--dim", "32"), ("--dv", "32"), ("--streams", "1"), ("--chunk", "2000")):
        big[big.index(k) + 1] = v
    t_small = gen(P("s16.h5"), 1, "--dtype", "float16")
    r = run(mpi_cmd(1, exe, "gen", *big, "-o", P("s16big.h5"), "--dtype", "float16"), timeout=300)
    ok(r.returncode == 0, "gen big: %s" % r.stderr)
    for trace in (t_small, P("s16big.h5")):
        with h5py.File(trace, "r") as f:
            S_, n_, d_ = f["keys"].shape
            dv_ = f["values"].shape[2]
        for np_ in (1, 2):
            wu = (("--semantics", "window-unmasked-values", "--window", "700"),) if trace == t_small else ()
            for extra in (("--batch", "1"), ("--batch", "64")) + wu:
                res = store_replay(trace, np_, P("st_np%d_%s.h5" % (np_, extra[1])), *extra)
                o32, m32 = res["e32"]
                o16, m16 = res["e16"]
                ok(np.all(np.isfinite(o16)), "store=f16: non-finite outputs")
                ok(np.array_equal(o32.view(np.uint32), o16.view(np.uint32)),
                   "np=%d %s: store=f16 outputs differ from store=f32 (max %.3g)" % (np_, extra, np.abs(o32 - o16).max()))
                ok(np.array_equal(res["eauto"][0].view(np.uint32), o16.view(np.uint32)) and res["eauto"][1] == m16,
                   "store=auto on a float16 trace is not f16 (memory %d vs %d)" % (res["eauto"][1], m16))
                # rows: S n (d + dv) elements, 4 or 2 bytes each; the run tables are the same in both
                rows32 = S_ * n_ * (d_ + dv_) * 4
                ok(m32 - m16 == rows32 // 2 and m32 > rows32,
                   "np=%d: memory_bytes f32 %d, f16 %d: expected them to differ by half the rows' %d bytes" % (np_, m32, m16, rows32))
                print("ok   [np=%d %s] %s: store=f16 == store=f32 bitwise; memory %d -> %d bytes"
                      % (np_, " ".join(extra), os.path.basename(trace), m32, m16))
    # auto on a float32 trace holds floats; f16 there is refused
    t32 = copy_as(t_small, P("s32.h5"), np.float32)
    r = run(mpi_cmd(1, exe, "replay", t32, "--methods", "exact:store=f32,name=a,exact,name=b", "--quiet", "-o", P("s32r.h5")))
    ok(r.returncode == 0, "replay float32: %s" % r.stderr)
    with h5py.File(P("s32r.h5"), "r") as f:
        ok(f["methods/a"].attrs["memory_bytes"] == f["methods/b"].attrs["memory_bytes"], "store=auto on a float32 trace is not f32")
    for np_ in (1, 2):
        refused(["replay", t32, "--methods", "exact:store=f16", "--quiet", "-o", P("s32bad.h5")], np_,
                "store=f16 needs a trace whose keys and values are float16")
    # checkpoint: stopped after 15 queries, resumed: the same bits and memory (2 ranks)
    for np_ in (2,):
        ref = store_replay(t_small, np_, P("ck_ref%d.h5" % np_), "--batch", "10")
        ck, out = P("st%d.ckpt" % np_), P("ck_out%d.h5" % np_)
        base = ["replay", t_small, "--methods", SPECS, "--save-outputs", "--quiet", "-o", out, "--batch", "10",
                "--checkpoint", ck]
        r = run(mpi_cmd(np_, exe, *base, "--stop-after", "15"), timeout=300)
        ok(r.returncode == 3, "np=%d: stop after 15: exit %d: %s" % (np_, r.returncode, r.stderr))
        r = run(mpi_cmd(np_, exe, *base, "--resume", ck), timeout=300)
        ok(r.returncode == 0, "np=%d: resume: %s" % (np_, r.stderr))
        with h5py.File(out, "r") as f:
            for g in ("e32", "e16", "eauto"):
                ok(np.array_equal(f["methods"][g]["outputs"][...].view(np.uint32), ref[g][0].view(np.uint32))
                   and int(f["methods"][g].attrs["memory_bytes"]) == ref[g][1], "np=%d: %s resumed differs" % (np_, g))
        print("ok   [np=%d] stopped and resumed: bitwise the uninterrupted run" % np_)

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
