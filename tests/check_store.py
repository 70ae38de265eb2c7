#!/usr/bin/python3
"""store= of the evicting methods (ALGORITHMS.md section 4h).

usage: check_store.py PART KVSTREAM WORKDIR
PART is one of
  formula  h2o:budget=X,store=S on one rank: the tokens held at the end are
           the capacity B = floor((X - fixed) / per) - every of the store's
           bytes per token (per = row + index 8 + score 8 + three int32; row
           from the bits formula), and the memory is exactly B per + fixed
           (fixed: the tq rotations, counted once per stream); the kept
           tokens grow as the bits shrink
  bitwise  on a float16 trace (every number a half), h2o, tova, snapkv,
           window and sinks with store=f16 give outputs bitwise equal to
           store=f32
  pinv     h2o, tova, snapkv, window and sinks with store=kivi4 and tq3
           under 1 and 3 ranks:
           outputs within 1e-6 max(1, |z|) of P = 1 (float32 outputs; the
           rank merge regroups sums), memory within 5%, kept tokens equal
"""
import math
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

part, exe, work = sys.argv[1], sys.argv[2], sys.argv[3]
work = os.path.join(work, "store")
os.makedirs(work, exist_ok=True)
S, n, d = 2, 4096, 16


def gen(name, *extra):
    trace = os.path.join(work, name)
    r = run(mpi_cmd(1, exe, "gen", "--kind", "clustered", "--clusters", "8", "--streams", str(S), "--tokens", str(n),
                    "--dim", str(d), "--queries", "24", "--chunk", "256", "--seed", "5", "-o", trace, *extra))
    if r.returncode:
        fail("gen failed: " + r.stderr)
    return trace


def replay(trace, methods, P, out, *extra):
    r = run(mpi_cmd(P, exe, "replay", trace, "--methods", methods, "--shard-chunk", "256", "-q", "-o", out, *extra),
            timeout=300)
    if r.returncode:
        fail("np=%d replay %s failed: %s" % (P, methods, r.stderr))
    return h5py.File(out, "r")


def row_bytes(store, n):
    """bytes of one vector of n channels in the store (store.h)"""
    if store == "f32":
        return 4 * n
    if store == "f16":
        return 2 * n
    bits = int(store[-1])
    if store.startswith("kivi"):
        return 4 * math.ceil(n / 32) + math.ceil(n * bits / 8)
    return 4 + math.ceil(n * bits / 8)


TQ_BOOK = 144  # sizeof(kv_tq_book) on x86-64: two ints, 16 + 15 floats, a double


def fixed(store):
    return 4 * (d * d + d * d) + 2 * TQ_BOOK if store.startswith("tq") else 0


if part == "formula":
    trace = gen("formula.h5")
    X, E = 60000, 16
    stores = ["f32", "f16", "kivi8", "kivi4", "kivi2", "tq4", "tq3", "tq2"]
    methods = ",".join("h2o:budget=%d,store=%s,name=%s" % (X, s, s) for s in stores)
    kept_prev = 0
    with replay(trace, methods, 1, os.path.join(work, "formula.r.h5")) as f:
        for s in stores:
            a = f["methods"][s].attrs
            per = 2 * row_bytes(s, d) + 8 + 8 + 3 * 4
            B = (X - fixed(s)) // per - E
            want_mem = S * (B * per + fixed(s))
            print("%-6s per %3d B/token, capacity %4d/stream: kept %d, final memory %d (want %d), bits/token %.1f"
                  % (s, per, B, a["kept_tokens"], a["final_memory_bytes"], want_mem, a["bits_per_token"]))
            if a["kept_tokens"] != S * B:
                fail("%s: kept %d tokens, capacity %d" % (s, a["kept_tokens"], S * B))
            if a["final_memory_bytes"] != want_mem:
                fail("%s: final memory %d, formula %d" % (s, a["final_memory_bytes"], want_mem))
            if a["memory_bytes"] > S * X:
                fail("%s: peak memory %d over the budget %d" % (s, a["memory_bytes"], S * X))
            if s in ("f32", "f16", "kivi8", "kivi4", "kivi2") and a["kept_tokens"] <= kept_prev:
                fail("%s: fewer bits do not hold more tokens" % s)
            kept_prev = a["kept_tokens"] if s.startswith(("f", "kivi")) else kept_prev
elif part == "bitwise":
    trace = gen("half.h5", "--dtype", "float16")
    specs = ["h2o:tokens=300", "tova:tokens=300", "snapkv:tokens=300,window=8", "window:W=300", "sinks:S=4,W=300"]
    methods = ",".join("%s,store=%s,name=%s-%s" % (m, s, m.split(":")[0], s) for m in specs for s in ("f32", "f16"))
    with replay(trace, methods, 1, os.path.join(work, "half.r.h5"), "--save-outputs") as f:
        for m in specs:
            k = m.split(":")[0]
            a, b = f["methods"][k + "-f32"]["outputs"][...], f["methods"][k + "-f16"]["outputs"][...]
            print("%-7s f16 vs f32 store: %d outputs, bitwise equal: %s" % (k, a.size, np.array_equal(a, b)))
            if not np.array_equal(a, b):
                fail("%s: store=f16 on half data differs from f32 by %.3g" % (k, float(np.abs(a - b).max())))
elif part == "pinv":
    trace = gen("pinv.h5")
    specs = ["h2o:tokens=400", "tova:tokens=400", "snapkv:tokens=400,window=8", "window:W=400", "sinks:S=4,W=400"]
    methods = ",".join("%s,store=%s,name=%s-%s" % (m, s, m.split(":")[0], s) for m in specs for s in ("kivi4", "tq3"))
    res = {}
    for P in (1, 3):
        with replay(trace, methods, P, os.path.join(work, "pinv-np%d.h5" % P), "--save-outputs") as f:
            res[P] = {l: (f["methods"][l]["outputs"][...].astype(np.float64), f["methods"][l].attrs["memory_bytes"],
                          f["methods"][l].attrs["kept_tokens"]) for l in f["methods"] if l != "exact"}
    for l, (z1, m1, k1) in res[1].items():
        z3, m3, k3 = res[3][l]
        tol = 1e-6 * max(1.0, float(np.abs(z1).max()))
        diff = float(np.abs(z1 - z3).max())
        print("%-12s max |z_3 - z_1| = %.3g (tolerance %.3g), memory %d vs %d, kept %d vs %d"
              % (l, diff, tol, m1, m3, k1, k3))
        if not diff <= tol:
            fail("%s: outputs at 3 ranks differ from 1 rank by %.3g" % (l, diff))
        if abs(m3 - m1) > 0.05 * m1 or k1 != k3:
            fail("%s: memory %d / kept %d at 3 ranks, %d / %d at 1" % (l, m3, k3, m1, k1))
else:
    fail("unknown part " + part)
print("PASS")
