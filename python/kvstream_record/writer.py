"""KVTraceWriter: write a kvtrace file (docs/TRACE_FORMAT.md) position by position.

Needs only numpy and h5py.  The file is the layout `kvstream record` writes:
stream s = layer * n_kv_heads + kv_head; each stream holds the g = n_heads /
n_kv_heads query heads of its kv head, position-major (row i*g + r is query
head kv_head*g + r at position i) with query_pos = i + 1, so the query at
position i sees tokens 0..i, itself included.

Positions are buffered in memory and written one whole chunk at a time
(datasets are chunked [1, C, d] along the token axis and grow as positions
arrive), so a generation loop may append one position per step.  A trace
closed before its first chunk fills gets chunks capped at its length, as
`kvstream record` writes them.
"""
import os

import numpy as np

F16_MAX = 65504.0


class TraceError(ValueError):
    """Bad input to the writer: one line naming what is wrong."""


def _np(x, what):
    """A torch tensor or array-like as a numpy array (float tensors as float32)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach()
        if x.is_floating_point():
            x = x.float()  # bfloat16/float16 exactly; kvtrace stores float32 or float16
        x = x.cpu().numpy()
    a = np.asarray(x)
    if what != "tokens" and not np.issubdtype(a.dtype, np.floating):
        raise TraceError(f"{what} has dtype {a.dtype}; expected floating point")
    return a


class KVTraceWriter:
    """Chunked writer of one model's attention trace.

    w = KVTraceWriter("trace.h5", n_layers=L, n_heads=Hq, n_kv_heads=Hkv, head_dim=d)
    w.append(k, v, q, tokens=ids, outputs=z)   # any number of times
    w.close()                                  # or use `with KVTraceWriter(...) as w:`

    k, v are [L, Hkv, T, d] and q (and the optional per-head attention
    outputs, before the output projection) [L, Hq, T, d]: the keys and
    queries after RoPE of T new positions.  dtype is "float32" or "float16"
    (IEEE half, rounded to nearest even; a value beyond +-65504 is an
    error).  /model_outputs is always float32.  scale defaults to
    1/sqrt(head_dim); pass the model's own logit scale if it differs.
    """

    def __init__(self, path, n_layers, n_heads, n_kv_heads, head_dim, dtype="float32", chunk=4096,
                 scale=None, source=None):
        import h5py
        for name, v in (("n_layers", n_layers), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads),
                        ("head_dim", head_dim), ("chunk", chunk)):
            if int(v) != v or v < 1:
                raise TraceError(f"{name} = {v!r} must be a positive integer")
        if n_heads % n_kv_heads:
            raise TraceError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
        if dtype not in ("float32", "float16"):
            raise TraceError(f"dtype {dtype!r}: expected 'float32' or 'float16'")
        self.scale = 1.0 / np.sqrt(head_dim) if scale is None else float(scale)
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise TraceError(f"scale = {scale} must be finite and > 0")
        self.path = path
        self.L, self.Hq, self.Hkv, self.d = int(n_layers), int(n_heads), int(n_kv_heads), int(head_dim)
        self.g, self.S = self.Hq // self.Hkv, self.L * self.Hkv
        self.C = int(chunk)
        self.dt = np.float16 if dtype == "float16" else np.float32
        self.n = 0              # positions written to the file
        self.pending = []       # buffered (k, v, q, tokens, outputs) blocks, [S, T, d] / [S, T*g, d]
        self.n_pending = 0
        self.with_tokens = self.with_outputs = None  # fixed by the first append
        self.f = h5py.File(path, "w")
        a = self.f.attrs
        a["format"] = np.bytes_("kvtrace")
        a["version"] = np.int64(1)
        a["scale"] = np.float64(self.scale)
        if source is not None:
            a["source"] = np.bytes_(str(source))
        for k, v in (("n_layers", self.L), ("n_heads", self.Hq), ("n_kv_heads", self.Hkv), ("head_dim", self.d)):
            a[k] = np.int64(v)

    # ------------------------------------------------------------- appending
    def append(self, k, v, q, tokens=None, outputs=None):
        """Add T positions (see the class docstring for the shapes)."""
        if self.f is None:
            raise TraceError(f"{self.path}: append after close")
        k, v, q = _np(k, "k"), _np(v, "v"), _np(q, "q")
        if k.ndim != 4 or k.shape[0] != self.L or k.shape[1] != self.Hkv or k.shape[3] != self.d:
            raise TraceError(f"k has shape {list(k.shape)}; expected [{self.L}, {self.Hkv}, T, {self.d}]")
        T = k.shape[2]
        if T < 1:
            raise TraceError("k holds no position (T = 0)")
        if v.shape != k.shape:
            raise TraceError(f"v has shape {list(v.shape)}; expected {list(k.shape)} like k")
        want_q = (self.L, self.Hq, T, self.d)
        if q.shape != want_q:
            raise TraceError(f"q has shape {list(q.shape)}; expected {list(want_q)}")
        if self.with_tokens is None:
            self.with_tokens, self.with_outputs = tokens is not None, outputs is not None
        if (tokens is not None) != self.with_tokens or (outputs is not None) != self.with_outputs:
            raise TraceError("tokens/outputs must be given at every append or at none (the first append decides)")
        tok = z = None
        if tokens is not None:
            tok = _np(tokens, "tokens").reshape(-1)
            if tok.shape[0] != T or not np.issubdtype(tok.dtype, np.integer):
                raise TraceError(f"tokens is {list(tok.shape)} {tok.dtype}; expected {T} integers")
            if tok.min() < 0 or tok.max() > np.iinfo(np.int32).max:
                raise TraceError("token ids must be in [0, 2^31)")
        if outputs is not None:
            z = _np(outputs, "outputs")
            if z.shape != want_q:
                raise TraceError(f"outputs has shape {list(z.shape)}; expected {list(want_q)}")
        pos = self.n + self.n_pending
        for name, a in (("k", k), ("v", v), ("q", q), ("outputs", z)):
            if a is not None and not np.isfinite(a).all():
                idx = [int(x[0]) for x in np.nonzero(~np.isfinite(a))]
                idx[2] += pos
                raise TraceError(f"{name} has a non-finite value at [layer, head, position, col] {idx}")
        # [L, H, T, d] -> streams: [S, T, d]; queries [S, T*g, d], position-major
        ks = k.reshape(self.S, T, self.d)
        vs = v.reshape(self.S, T, self.d)
        qs = q.reshape(self.L, self.Hkv, self.g, T, self.d).transpose(0, 1, 3, 2, 4).reshape(self.S, T * self.g, self.d)
        zs = None
        if z is not None:
            zs = z.reshape(self.L, self.Hkv, self.g, T, self.d).transpose(0, 1, 3, 2, 4).reshape(self.S, T * self.g, self.d)
            zs = zs.astype(np.float32)
        self.pending.append((self._disk(ks, "k", pos), self._disk(vs, "v", pos), self._disk(qs, "q", pos), tok, zs))
        self.n_pending += T
        if self.n_pending >= self.C:
            self._flush()

    def _disk(self, a, name, pos):
        """Convert to the on-disk type here (numpy rounds to nearest even), so HDF5 never converts."""
        if self.dt == np.float32 or a.dtype == self.dt:
            return np.ascontiguousarray(a, dtype=self.dt)
        big = np.abs(a) > F16_MAX
        if big.any():
            s, r, c = (int(x[0]) for x in np.nonzero(big))
            raise TraceError(f"{name} value {a[s, r, c]} (stream {s}, position {pos + r // (self.g if name == 'q' else 1)}) "
                             "is beyond the float16 range (+-65504); use dtype='float32'")
        return a.astype(np.float16)

    def _create(self, n):
        """Create the datasets; n: the trace's length when it is closed
        before the first chunk fills (then chunks are capped at it, as
        kvstream's writer does), else None."""
        d, S, f = self.d, self.S, self.f
        ct = cq = self.C
        if n is not None:
            ct, cq = min(ct, n), min(cq, n * self.g)
        f.create_dataset("keys", (S, 0, d), self.dt, maxshape=(S, None, d), chunks=(1, ct, d))
        f.create_dataset("values", (S, 0, d), self.dt, maxshape=(S, None, d), chunks=(1, ct, d))
        f.create_dataset("queries", (S, 0, d), self.dt, maxshape=(S, None, d), chunks=(1, cq, d))
        f.create_dataset("query_pos", (0,), np.int64, maxshape=(None,), chunks=(cq,))
        if self.with_tokens:
            f.create_dataset("tokens", (0,), np.int32, maxshape=(None,), chunks=(ct,))
        if self.with_outputs:
            f.create_dataset("model_outputs", (S, 0, d), np.float32, maxshape=(S, None, d), chunks=(1, cq, d))

    def _flush(self, closing=False):
        if not self.n_pending:
            return
        if "keys" not in self.f:
            self._create(self.n_pending if closing else None)
        f, n0, T, g = self.f, self.n, self.n_pending, self.g
        n1 = n0 + T
        parts = list(zip(*self.pending))
        for name, i, rows in (("keys", 0, 1), ("values", 1, 1), ("queries", 2, g), ("model_outputs", 4, g)):
            if name in f:
                ds = f[name]
                ds.resize(n1 * rows, axis=1)
                ds[:, n0 * rows:n1 * rows] = np.concatenate(parts[i], axis=1)
        f["query_pos"].resize((n1 * g,))
        f["query_pos"][n0 * g:] = np.repeat(np.arange(n0 + 1, n1 + 1, dtype=np.int64), g)
        if self.with_tokens:
            f["tokens"].resize((n1,))
            f["tokens"][n0:] = np.concatenate(parts[3]).astype(np.int32)
        self.n, self.pending, self.n_pending = n1, [], 0

    # ------------------------------------------------------------- closing
    def close(self):
        """Write what is buffered and close the file.  A trace with no
        position is not a valid kvtrace: it is removed and TraceError raised."""
        if self.f is None:
            return
        try:
            self._flush(closing=True)
        finally:
            self.f.close()
            self.f = None
        if self.n == 0:
            os.remove(self.path)
            raise TraceError(f"{self.path}: no position was appended; no trace written")

    def abort(self):
        """Close and remove the file (after an error)."""
        if self.f is not None:
            self.f.close()
            self.f = None
        if os.path.exists(self.path):
            os.remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False
