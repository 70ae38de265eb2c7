#!/usr/bin/python3
"""Convert attention tensors dumped to a .npz into a kvtrace file.

    /usr/bin/python3 analysis/npz_to_kvtrace.py dump.npz -o trace.h5 [--chunk C] [--source NAME]
        [--dtype float32|float16] [--bfloat16-bits]

The output follows docs/TRACE_FORMAT.md (kvtrace version 1), the same
layout `kvstream record` writes, so `kvstream info` / `kvstream replay` read it.
Needs numpy and h5py (Debian: python3-numpy, python3-h5py; run with
/usr/bin/python3).

Accepted input (np.savez / np.savez_compressed; any float or integer dtype).
keys, values and queries are written as float32, or with --dtype float16 as
IEEE half (rounded to nearest even by numpy; a value beyond +-65504 is an
error, not an inf); float16 input written as float16 is kept bit for bit.
model_outputs is always written as float32.

bfloat16: numpy has no bfloat16 type, so model dumps hold it as raw bits
(uint16, e.g. `t.view(torch.int16).numpy()`, or ml_dtypes arrays, which
np.load reads back as 2-byte void).  With --bfloat16-bits every uint16/int16
or 2-byte void array among keys/values/queries/model_outputs is taken as
bfloat16 bits and upcast exactly to float32 (bits << 16).  kvtrace has no
bfloat16 dataset type: the result is written as float32 (or rounded to
float16 when --dtype float16 is asked, which loses range).  Without the
flag, uint16 arrays are read as integers.

  keys     [L, Hkv, n, d]   post-RoPE keys of n tokens, per layer and kv head
           or [S, n, d]     S independent streams
  values   [L, Hkv, n, dv]  or [S, n, dv]  (same form as keys)
  queries  [L, Hq, n, d]    one query per token position per query head
                            (needs 4-D keys; Hq must be a multiple of Hkv).
                            Query head h belongs to kv head h // (Hq // Hkv)
                            and the query at position i attends to tokens
                            0..i, itself included.
           or [S, m, d]     explicit queries; then query_pos is required
  query_pos [m]             (with 3-D queries) query j attends to tokens
                            0 .. query_pos[j]-1: 1 <= query_pos <= n,
                            non-decreasing
  tokens   [n]              optional token ids (non-negative, int32 range)
  scale    scalar           optional logit scale (> 0); default 1/sqrt(d)
  model_outputs             optional attention outputs the model computed, in
           [L, Hq, n, dv]   the same form as queries (4-D) or [S, m, dv],
                            written to /model_outputs for checking a replay

Any other array name is an error (a typo must not pass silently).

Stream s = layer * Hkv + kv_head.  With 4-D queries each stream gets the
g = Hq / Hkv query heads that share its kv head, position-major: row i*g + r
of stream (l, h) is query head h*g + r at position i, and query_pos[i*g + r]
= i + 1.  This is exactly the grouped-query layout of TRACE_FORMAT.md.

Attributes written: format='kvtrace', version=1, scale, source (default: the
.npz file name), and n_layers/n_heads/n_kv_heads/head_dim when keys and
queries are both 4-D (the model shape is then known).  Datasets are chunked
along the token (query) axis as [1, C, d] with C = --chunk (default 4096).

Errors (missing or unknown arrays, shapes that disagree, out-of-range
query_pos, non-finite values) print one line on stderr and exit with status 2;
no output file is left behind.

Example, from PyTorch hooks that collected per-layer tensors of shape
[Hkv, n, d] / [Hq, n, d]:

    np.savez("dump.npz", keys=np.stack(ks), values=np.stack(vs),
             queries=np.stack(qs), tokens=np.array(ids), scale=1/np.sqrt(d))
    /usr/bin/python3 analysis/npz_to_kvtrace.py dump.npz -o dump.h5
"""
import argparse
import os
import sys
import zipfile

import numpy as np

ACCEPTED = ("keys", "values", "queries", "query_pos", "tokens", "scale", "model_outputs")


class InputError(Exception):
    pass


def _shape(a):
    return "[" + ", ".join(str(x) for x in a.shape) + "]"


def _numeric(name, a):
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"array '{name}' has dtype {a.dtype}; expected a real float or integer type")


def _bfloat16_bits(name, a):
    """Raw bfloat16 bits (uint16, int16 or 2-byte void) -> exact float32."""
    if a.dtype.itemsize != 2 or a.dtype.kind not in "uiV":
        raise InputError(f"--bfloat16-bits: array '{name}' has dtype {a.dtype}; expected uint16 raw bfloat16 bits")
    bits = np.ascontiguousarray(a).view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)


def _finite(name, a):
    # one stream at a time keeps the temporary boolean array small
    for s in range(a.shape[0]):
        bad = ~np.isfinite(a[s])
        if bad.any():
            idx = (s,) + tuple(int(x[0]) for x in np.nonzero(bad))
            raise InputError(f"array '{name}' has a non-finite value at {list(idx)}")


class Layout:
    """Validated input, viewed as kvtrace streams."""

    def __init__(self, arrs):
        unknown = sorted(set(arrs) - set(ACCEPTED))
        if unknown:
            raise InputError(f"unknown array(s) {', '.join(unknown)}; accepted: {', '.join(ACCEPTED)}")
        for name in ("keys", "values", "queries"):
            if name not in arrs:
                raise InputError(f"missing array '{name}' (have: {', '.join(sorted(arrs)) or 'none'})")
        K, V, Q = arrs["keys"], arrs["values"], arrs["queries"]
        for name in ("keys", "values", "queries", "model_outputs"):
            if name in arrs:
                _numeric(name, arrs[name])

        if K.ndim not in (3, 4):
            raise InputError(f"keys is {_shape(K)}; expected [L, Hkv, n, d] or [S, n, d]")
        if V.ndim != K.ndim or V.shape[:-1] != K.shape[:-1]:
            raise InputError(f"values is {_shape(V)} but keys is {_shape(K)}; all but the last dimension must agree")
        self.model = None  # (L, Hq, Hkv) when known
        if K.ndim == 4:
            L, Hkv, n, d = K.shape
            self.K = K.reshape(L * Hkv, n, d)
            self.V = V.reshape(L * Hkv, n, V.shape[3])
        else:
            L = Hkv = None
            self.K, self.V = K, V
        self.S, self.n, self.d = self.K.shape
        self.dv = self.V.shape[2]
        if min(self.S, self.n, self.d, self.dv) < 1:
            raise InputError(f"keys {_shape(K)} / values {_shape(V)} have a zero dimension")

        if Q.ndim == 4:
            if K.ndim != 4:
                raise InputError(f"queries is 4-D {_shape(Q)} but keys is {_shape(K)}; "
                                 "4-D queries [L, Hq, n, d] need 4-D keys [L, Hkv, n, d]")
            if Q.shape[0] != L or Q.shape[2] != self.n or Q.shape[3] != self.d:
                raise InputError(f"queries is {_shape(Q)}; expected [{L}, Hq, {self.n}, {self.d}] to match keys {_shape(K)}")
            Hq = Q.shape[1]
            if Hq < Hkv or Hq % Hkv:
                raise InputError(f"queries has {Hq} heads, not a multiple of the {Hkv} kv heads of keys")
            self.g = Hq // Hkv
            self.model = (L, Hq, Hkv)
            self.m = self.n * self.g
            qpos = np.repeat(np.arange(1, self.n + 1, dtype=np.int64), self.g)
            if "query_pos" in arrs and not np.array_equal(np.asarray(arrs["query_pos"]).ravel(), qpos):
                raise InputError("query_pos disagrees with the positions implied by 4-D queries "
                                 "(i + 1, repeated per query head); leave it out")
        elif Q.ndim == 3:
            if Q.shape[0] != self.S or Q.shape[2] != self.d:
                raise InputError(f"queries is {_shape(Q)}; expected [{self.S}, m, {self.d}] to match keys {_shape(K)}")
            self.g = None
            self.m = Q.shape[1]
            if self.m < 1:
                raise InputError("queries holds no query")
            if "query_pos" not in arrs:
                raise InputError("3-D queries [S, m, d] need query_pos [m]")
            qpos = self._query_pos(arrs["query_pos"])
        else:
            raise InputError(f"queries is {_shape(Q)}; expected [L, Hq, n, d] or [S, m, d]")
        self.Q = Q
        self.query_pos = qpos

        self.Z = arrs.get("model_outputs")
        if self.Z is not None:
            want = (L, Q.shape[1], self.n, self.dv) if Q.ndim == 4 else (self.S, self.m, self.dv)
            if self.Z.shape != want:
                raise InputError(f"model_outputs is {_shape(self.Z)}; expected [{', '.join(map(str, want))}]")

        self.tokens = None
        if "tokens" in arrs:
            t = np.asarray(arrs["tokens"])
            if t.ndim != 1 or t.shape[0] != self.n or not np.issubdtype(t.dtype, np.integer):
                raise InputError(f"tokens is {_shape(t)} {t.dtype}; expected [{self.n}] integers")
            if t.size and (t.min() < 0 or t.max() > np.iinfo(np.int32).max):
                raise InputError("tokens must be in [0, 2^31)")
            self.tokens = t.astype(np.int32)

        self.scale = 1.0 / np.sqrt(self.d)
        if "scale" in arrs:
            sc = np.asarray(arrs["scale"])
            if sc.size != 1 or not np.issubdtype(sc.dtype, np.number):
                raise InputError(f"scale is {_shape(sc)} {sc.dtype}; expected one number")
            self.scale = float(sc.ravel()[0])
            if not np.isfinite(self.scale) or self.scale <= 0:
                raise InputError(f"scale = {self.scale} must be finite and > 0")

        _finite("keys", self.K)
        _finite("values", self.V)
        _finite("queries", self.Q)
        if self.Z is not None:
            _finite("model_outputs", self.Z)

    def _query_pos(self, p):
        p = np.asarray(p)
        if p.ndim != 1 or p.shape[0] != self.m or not np.issubdtype(p.dtype, np.integer):
            raise InputError(f"query_pos is {_shape(p)} {p.dtype}; expected [{self.m}] integers")
        if p.min() < 1 or p.max() > self.n:
            raise InputError(f"query_pos has values in [{p.min()}, {p.max()}]; each must be in [1, {self.n}]")
        dec = np.nonzero(np.diff(p) < 0)[0]
        if dec.size:
            j = int(dec[0]) + 1
            raise InputError(f"query_pos decreases at index {j} ({p[j]} after {p[j - 1]})")
        return p.astype(np.int64)

    def stream_rows(self, A, s):
        """Rows of stream s of a query-shaped array (queries, model_outputs)."""
        if A.ndim == 3:
            return A[s]
        L, Hq, n, w = A.shape
        Hkv = Hq // self.g
        layer, h = divmod(s, Hkv)
        # [g, n, w] -> [n, g, w]: position-major, query head h*g + r in row i*g + r
        return A[layer, h * self.g:(h + 1) * self.g].transpose(1, 0, 2).reshape(n * self.g, w)


def _as(name, s, a, dt):
    """One stream's rows in the output dtype; float16 must not overflow to inf."""
    a = np.asarray(a)
    if dt == np.float32 or a.dtype == dt:
        return a.astype(dt, copy=False)
    with np.errstate(over="ignore"):
        h = a.astype(dt)
    bad = ~np.isfinite(h)
    if bad.any():
        idx = tuple(int(x[0]) for x in np.nonzero(bad))
        raise InputError(f"{name} value {a[idx]} at [stream, row, col] {[s, *idx]} is beyond the float16 "
                         "range (+-65504); use --dtype float32")
    return h


def write(lay, path, chunk, source, dtype="float32"):
    import h5py
    C = chunk
    ct, cq = min(C, lay.n), min(C, lay.m)
    f32 = np.float32
    ft = np.float16 if dtype == "float16" else np.float32
    with h5py.File(path, "w") as f:
        f.attrs["format"] = np.bytes_("kvtrace")
        f.attrs["version"] = np.int64(1)
        f.attrs["scale"] = np.float64(lay.scale)
        f.attrs["source"] = np.bytes_(source)
        if lay.model:
            L, Hq, Hkv = lay.model
            for k, v in (("n_layers", L), ("n_heads", Hq), ("n_kv_heads", Hkv), ("head_dim", lay.d)):
                f.attrs[k] = np.int64(v)
        dk = f.create_dataset("keys", (lay.S, lay.n, lay.d), ft, chunks=(1, ct, lay.d))
        dvv = f.create_dataset("values", (lay.S, lay.n, lay.dv), ft, chunks=(1, ct, lay.dv))
        dq = f.create_dataset("queries", (lay.S, lay.m, lay.d), ft, chunks=(1, cq, lay.d))
        dz = None
        if lay.Z is not None:
            dz = f.create_dataset("model_outputs", (lay.S, lay.m, lay.dv), f32, chunks=(1, cq, lay.dv))
        for s in range(lay.S):
            # converted here (numpy, round to nearest even), so h5py/HDF5 never converts
            dk[s] = _as("keys", s, lay.K[s], ft)
            dvv[s] = _as("values", s, lay.V[s], ft)
            dq[s] = _as("queries", s, lay.stream_rows(lay.Q, s), ft)
            if dz is not None:
                dz[s] = lay.stream_rows(lay.Z, s)
        f.create_dataset("query_pos", data=lay.query_pos, dtype=np.int64, chunks=(cq,))
        if lay.tokens is not None:
            f.create_dataset("tokens", data=lay.tokens, dtype=np.int32, chunks=(ct,))


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert a .npz of keys/values/queries into a kvtrace HDF5 file.")
    ap.add_argument("input", help="the .npz (see the module docstring for the arrays it must hold)")
    ap.add_argument("-o", "--output", required=True, help="kvtrace file to write")
    ap.add_argument("--chunk", type=int, default=4096, help="token-axis chunk length (default 4096)")
    ap.add_argument("--source", help="value of the 'source' attribute (default: the input file name)")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                    help="on-disk type of keys/values/queries (default float32); float16 is IEEE half, "
                         "a value beyond +-65504 is an error; model_outputs stays float32")
    ap.add_argument("--bfloat16-bits", action="store_true",
                    help="read uint16 (or 2-byte void, ml_dtypes) keys/values/queries/model_outputs as raw "
                         "bfloat16 bits; they are upcast exactly to float32 (kvtrace has no bfloat16 type)")
    a = ap.parse_args(argv)
    try:
        if a.chunk < 1:
            raise InputError(f"--chunk {a.chunk} must be >= 1")
        try:
            npz = np.load(a.input, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise InputError("not an .npz archive (np.savez output)")
            with npz:
                arrs = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise InputError("cannot read as .npz: " + " ".join(str(e).split()))
        if a.bfloat16_bits:
            for k in ("keys", "values", "queries", "model_outputs"):
                if k in arrs:
                    arrs[k] = _bfloat16_bits(k, arrs[k])
        lay = Layout(arrs)
        source = a.source if a.source is not None else os.path.basename(a.input)
    except InputError as e:
        print(f"npz_to_kvtrace: {a.input}: {e}", file=sys.stderr)
        return 2
    try:
        write(lay, a.output, a.chunk, source, a.dtype)
    except InputError as e:
        if os.path.exists(a.output):
            os.remove(a.output)
        print(f"npz_to_kvtrace: {a.input}: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        if os.path.exists(a.output):
            os.remove(a.output)
        print(f"npz_to_kvtrace: {a.output}: cannot write: {e}", file=sys.stderr)
        return 2
    g = f", {lay.g} query heads per kv head" if lay.g else ""
    print(f"wrote {a.output}: {lay.S} streams x {lay.n} tokens, d {lay.d}, dv {lay.dv}, {lay.m} queries{g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
