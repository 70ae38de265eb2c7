#!/usr/bin/python3
"""Tests of analysis/npz_to_kvtrace.py and of the layout `kvstream record` writes.

    test_npz_to_kvtrace.py --tmp DIR [--kvstream-cmd mpiexec -n 1 kvstream]
        converter on synthetic arrays: contents, GQA mapping, query_pos,
        attributes, chunking, and rejection (exit 2) of bad input; with
        --kvstream-cmd, also that `kvstream info` accepts the result.
    test_npz_to_kvtrace.py --record-trace FILE --tmp DIR
        a trace from `kvstream record --tokens 700 --prompt-tokens 5,6,7
        --chunk 256` on stories260K: shapes, dtypes, attributes, query_pos,
        tokens, chunking, /model_outputs = attention recomputed from the
        trace, and a round trip through the converter giving the same file.

Run with /usr/bin/python3 (Debian's numpy + h5py)."""
import argparse
import os
import subprocess
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERTER = os.path.join(HERE, "..", "analysis", "npz_to_kvtrace.py")
failures = 0
checks = 0


def check(cond, msg):
    global failures, checks
    checks += 1
    if not cond:
        failures += 1
        print("FAIL:", msg, file=sys.stderr)


def convert(npz, out, *extra):
    return subprocess.run([sys.executable, CONVERTER, npz, "-o", out, *extra], capture_output=True, text=True)


def attr_str(f, name):
    v = f.attrs[name]
    return v.decode() if isinstance(v, bytes) else str(v)


def attention(K, V, Q, qpos, scale):
    """Exact causal attention of one stream, float64."""
    K, V, Q = (x.astype(np.float64) for x in (K, V, Q))
    A = Q @ K.T * scale
    A[np.arange(K.shape[0])[None, :] >= qpos[:, None]] = -np.inf
    A -= A.max(axis=1, keepdims=True)
    W = np.exp(A)
    W /= W.sum(axis=1, keepdims=True)
    return W @ V


def test_gqa(tmp, kvstream_cmd):
    rng = np.random.default_rng(1)
    L, Hkv, Hq, n, d, dv = 3, 2, 6, 11, 4, 5
    g = Hq // Hkv
    K = rng.standard_normal((L, Hkv, n, d))               # float64 in, float32 out
    V = rng.standard_normal((L, Hkv, n, dv)).astype(np.float32)
    Q = rng.standard_normal((L, Hq, n, d)).astype(np.float32)
    Z = rng.standard_normal((L, Hq, n, dv)).astype(np.float32)
    tok = rng.integers(0, 500, n)
    npz, out = os.path.join(tmp, "gqa.npz"), os.path.join(tmp, "gqa.h5")
    np.savez(npz, keys=K, values=V, queries=Q, model_outputs=Z, tokens=tok, scale=np.float64(0.3))
    r = convert(npz, out, "--chunk", "4", "--source", "unit-test")
    check(r.returncode == 0, f"gqa convert failed: {r.stderr}")
    if r.returncode:
        return
    with h5py.File(out, "r") as f:
        S = L * Hkv
        check(f["keys"].shape == (S, n, d) and f["keys"].dtype == np.float32, f"keys {f['keys'].shape} {f['keys'].dtype}")
        check(f["values"].shape == (S, n, dv), f"values {f['values'].shape}")
        check(f["queries"].shape == (S, n * g, d), f"queries {f['queries'].shape}")
        check(f["model_outputs"].shape == (S, n * g, dv), f"model_outputs {f['model_outputs'].shape}")
        check(f["query_pos"].dtype == np.int64 and f["tokens"].dtype == np.int32, "query_pos/tokens dtypes")
        check(f["keys"].chunks == (1, 4, d) and f["queries"].chunks == (1, 4, d), f"chunks {f['keys'].chunks}")
        check(attr_str(f, "format") == "kvtrace" and int(f.attrs["version"]) == 1, "format/version")
        check(float(f.attrs["scale"]) == 0.3 and attr_str(f, "source") == "unit-test", "scale/source")
        check([int(f.attrs[k]) for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim")] == [L, Hq, Hkv, d],
              "model shape attributes")
        check(np.array_equal(f["tokens"][:], tok), "tokens")
        qp = f["query_pos"][:]
        check(np.array_equal(qp, np.repeat(np.arange(1, n + 1), g)), f"query_pos {qp}")
        keys, vals, qs, zs = f["keys"][:], f["values"][:], f["queries"][:], f["model_outputs"][:]
    for l in range(L):
        for h in range(Hkv):
            s = l * Hkv + h
            check(np.array_equal(keys[s], K[l, h].astype(np.float32)), f"keys stream {s}")
            check(np.array_equal(vals[s], V[l, h]), f"values stream {s}")
            for i in range(n):
                for r in range(g):
                    # row i*g + r of stream (l, h) is query head h*g + r at position i
                    check(np.array_equal(qs[s, i * g + r], Q[l, h * g + r, i]), f"query row {i * g + r} of stream {s}")
                    check(np.array_equal(zs[s, i * g + r], Z[l, h * g + r, i]), f"output row {i * g + r} of stream {s}")
    if kvstream_cmd:
        r = subprocess.run(kvstream_cmd + ["info", out], capture_output=True, text=True)
        check(r.returncode == 0 and "valid kvtrace" in r.stdout, f"kvstream info rejects the converted file: {r.stdout}{r.stderr}")


def test_explicit(tmp):
    rng = np.random.default_rng(2)
    S, n, m, d, dv = 3, 9, 4, 6, 2
    K = rng.standard_normal((S, n, d)).astype(np.float32)
    V = rng.standard_normal((S, n, dv)).astype(np.float32)
    Q = rng.standard_normal((S, m, d)).astype(np.float32)
    qpos = np.array([1, 4, 4, 9])
    npz, out = os.path.join(tmp, "explicit.npz"), os.path.join(tmp, "explicit.h5")
    np.savez(npz, keys=K, values=V, queries=Q, query_pos=qpos)
    r = convert(npz, out)
    check(r.returncode == 0, f"explicit convert failed: {r.stderr}")
    if r.returncode:
        return
    with h5py.File(out, "r") as f:
        check(np.array_equal(f["keys"][:], K) and np.array_equal(f["values"][:], V), "explicit keys/values")
        check(np.array_equal(f["queries"][:], Q), "explicit queries")
        check(np.array_equal(f["query_pos"][:], qpos), "explicit query_pos")
        check("tokens" not in f and "model_outputs" not in f, "no optional datasets")
        check(abs(float(f.attrs["scale"]) - 1 / np.sqrt(d)) < 1e-15, "default scale")
        check(attr_str(f, "source") == "explicit.npz", "default source")
        check("n_layers" not in f.attrs, "no model shape for 3-D input")
        check(f["keys"].chunks == (1, n, d), f"chunk clamped to n: {f['keys'].chunks}")


def test_errors(tmp):
    rng = np.random.default_rng(3)
    L, Hkv, Hq, n, d = 2, 2, 4, 5, 4
    good = dict(keys=rng.standard_normal((L, Hkv, n, d)), values=rng.standard_normal((L, Hkv, n, d)),
                queries=rng.standard_normal((L, Hq, n, d)))
    nan_keys = good["keys"].copy()
    nan_keys[1, 0, 3, 2] = np.nan
    cases = [
        ("values shape", dict(good, values=rng.standard_normal((L, Hkv, n + 1, d))), "values is"),
        ("query heads", dict(good, queries=rng.standard_normal((L, 3, n, d))), "multiple"),
        ("query length", dict(good, queries=rng.standard_normal((L, Hq, n - 1, d))), "queries is"),
        ("missing keys", {k: v for k, v in good.items() if k != "keys"}, "missing array 'keys'"),
        ("unknown array", dict(good, query_positions=np.arange(n)), "unknown array"),
        ("3-D queries without query_pos", dict(keys=good["keys"][0], values=good["values"][0],
                                               queries=good["keys"][0][:, :3]), "need query_pos"),
        ("query_pos out of range", dict(keys=good["keys"][0], values=good["values"][0], queries=good["keys"][0][:, :3],
                                        query_pos=np.array([1, 2, n + 1])), "query_pos"),
        ("query_pos decreasing", dict(keys=good["keys"][0], values=good["values"][0], queries=good["keys"][0][:, :3],
                                      query_pos=np.array([2, 1, 3])), "decreases"),
        ("tokens length", dict(good, tokens=np.arange(n + 2)), "tokens"),
        ("bad scale", dict(good, scale=np.float64(-1)), "scale"),
        ("non-finite keys", dict(good, keys=nan_keys), "non-finite"),
        ("model_outputs shape", dict(good, model_outputs=rng.standard_normal((L, Hq, n, d + 1))), "model_outputs"),
    ]
    for what, arrs, want in cases:
        npz, out = os.path.join(tmp, "bad.npz"), os.path.join(tmp, "bad.h5")
        if os.path.exists(out):
            os.remove(out)
        np.savez(npz, **arrs)
        r = convert(npz, out)
        msg = r.stderr.strip()
        check(r.returncode == 2, f"{what}: exit {r.returncode}, expected 2 ({msg})")
        check(want in msg and len(msg.splitlines()) == 1 and "bad.npz" in msg, f"{what}: message '{msg}' lacks '{want}'")
        check(not os.path.exists(out), f"{what}: output written anyway")
    txt = os.path.join(tmp, "not_npz.npz")
    with open(txt, "w") as fh:
        fh.write("hello\n")
    r = convert(txt, os.path.join(tmp, "bad.h5"))
    check(r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, f"text file: exit {r.returncode} {r.stderr}")
    r = convert(os.path.join(tmp, "missing.npz"), os.path.join(tmp, "bad.h5"))
    check(r.returncode == 2 and "missing.npz" in r.stderr, f"missing file: exit {r.returncode} {r.stderr}")


def test_record_trace(path, tmp):
    L, Hq, Hkv, hd, N = 5, 8, 4, 8, 700  # stories260K, --tokens 700
    S, g = L * Hkv, Hq // Hkv
    with h5py.File(path, "r") as f:
        shapes = {k: f[k].shape for k in f}
        want = {"keys": (S, N, hd), "values": (S, N, hd), "queries": (S, N * g, hd), "model_outputs": (S, N * g, hd),
                "query_pos": (N * g,), "tokens": (N,)}
        check(shapes == want, f"datasets {shapes}, expected {want}")
        for k in ("keys", "values", "queries", "model_outputs"):
            check(f[k].dtype == np.float32, f"{k} dtype {f[k].dtype}")
        check(f["query_pos"].dtype == np.int64 and f["tokens"].dtype == np.int32, "query_pos/tokens dtypes")
        check(f["keys"].chunks == (1, 256, hd), f"keys chunks {f['keys'].chunks} (--chunk 256)")
        check(attr_str(f, "format") == "kvtrace" and int(f.attrs["version"]) == 1, "format/version")
        check(abs(float(f.attrs["scale"]) - 1 / np.sqrt(hd)) < 1e-15, f"scale {f.attrs['scale']}")
        check(attr_str(f, "source") == "stories260K.bin", f"source {attr_str(f, 'source')}")
        check([int(f.attrs[k]) for k in ("n_layers", "n_heads", "n_kv_heads", "head_dim")] == [L, Hq, Hkv, hd],
              "model shape attributes")
        check("seed" not in f.attrs, "greedy trace has no seed attribute")
        qp = f["query_pos"][:]
        check(np.array_equal(qp, np.repeat(np.arange(1, N + 1), g)), f"query_pos starts {qp[:8]}")
        tok = f["tokens"][:]
        check(list(tok[:4]) == [1, 5, 6, 7], f"tokens start {tok[:4]} (BOS then the prompt 5,6,7)")
        check(tok.min() >= 0 and tok.max() < 512, "token ids within the vocabulary")
        K, V, Q, Z = (f[k][:] for k in ("keys", "values", "queries", "model_outputs"))
        scale = float(f.attrs["scale"])

    # /model_outputs must be the attention of each query row over its own
    # stream's prefix: this pins the GQA row order and query_pos.
    worst = 0.0
    for s in range(S):
        z = attention(K[s], V[s], Q[s], qp, scale)
        worst = max(worst, float(np.abs(z - Z[s]).max() / np.abs(Z[s]).max()))
    check(worst < 1e-5, f"/model_outputs vs attention recomputed from the trace: rel err {worst:g}")
    # ... and pairing rows with the other query head of the pair must not match
    swapped = Q[0].reshape(N, g, hd)[:, ::-1].reshape(N * g, hd)
    check(np.abs(attention(K[0], V[0], swapped, qp, scale) - Z[0]).max() > 1e-3, "swapped query heads match too")

    # Round trip: the 4-D form a PyTorch user would dump -> converter -> same trace.
    npz, out = os.path.join(tmp, "record_roundtrip.npz"), os.path.join(tmp, "record_roundtrip.h5")
    K4 = K.reshape(L, Hkv, N, hd)
    V4 = V.reshape(L, Hkv, N, hd)
    Q4 = Q.reshape(L, Hkv, N, g, hd).transpose(0, 1, 3, 2, 4).reshape(L, Hq, N, hd)
    Z4 = Z.reshape(L, Hkv, N, g, hd).transpose(0, 1, 3, 2, 4).reshape(L, Hq, N, hd)
    np.savez(npz, keys=K4, values=V4, queries=Q4, model_outputs=Z4, tokens=tok, scale=scale)
    r = convert(npz, out, "--source", "stories260K.bin", "--chunk", "256")
    check(r.returncode == 0, f"round trip convert failed: {r.stderr}")
    if r.returncode:
        return
    with h5py.File(path, "r") as a, h5py.File(out, "r") as b:
        check(sorted(a) == sorted(b), f"datasets {sorted(a)} vs {sorted(b)}")
        for k in a:
            check(a[k].dtype == b[k].dtype and a[k].chunks == b[k].chunks and np.array_equal(a[k][:], b[k][:]),
                  f"round trip changes {k}")
        for k in a.attrs:
            check(k in b.attrs and np.all(a.attrs[k] == b.attrs[k]), f"round trip changes attribute {k}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--record-trace")
    ap.add_argument("--kvstream-cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    os.makedirs(a.tmp, exist_ok=True)
    if a.record_trace:
        test_record_trace(a.record_trace, a.tmp)
    else:
        test_gqa(a.tmp, a.kvstream_cmd)
        test_explicit(a.tmp)
        test_errors(a.tmp)
    print(f"test_npz_to_kvtrace: {checks - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
