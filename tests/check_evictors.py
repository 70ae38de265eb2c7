#!/usr/bin/python3
"""An independent float64 reference of the evicting methods, against kvstream.

usage: check_evictors.py [--exe KVSTREAM | --build DIR] [--work DIR] [--only METHOD[,METHOD]] [--np 1,3] [-v]

The reference is written from the methods' definitions (docs/ALGORITHMS.md for
window, sinks and topk; the papers and the 1-rank semantics of h2o, tova,
snapkv and expected-attention: decision points, (score, index) keys, top-B keeps), never from
kvstream's C code.  It runs on three traces: a sparse-query gaussian trace
(2 streams x 4000 tokens, d = 16, 100 queries), a query at every position
(2 x 1000, d = 16) and a recorded stories260K trace (20 streams, 256 positions,
two query rows per position, n_kv_heads = 4), with budgets from 1 token to
>= n (exact), under `mpirun -np P kvstream replay --save-outputs` at P = 1 and 3.

The reference, at one rank (rows at position p see tokens < p; weights are
normalised over the held set; decision points: the query positions and the
multiples of every/period; at a query position decide, answer, then score):
- window:W keeps [p-W, p); sinks:S,W adds [0, S); topk:k the k largest logits.
- h2o: recent = the last R (default B/2); heavy = the top B-R (score, index)
  of the previous heavy set and the tokens that left the recent window;
  score = weight summed over every row answered while held.
- tova: top-B of held and arrivals by the mean weight under the last answered
  position's rows (each with its own m, l; arrivals too); none yet: newest B.
  scope=layer: one set per layer (stream // n_kv_heads), scores averaged
  over the layer's streams.
- snapkv (defaults window 32, kernel 5, pool avg, period 64): above B, keep
  the newest `window` positions and the top max(window, B - period) - kept of
  the rest by pooled vote; vote = weight summed over the rows of the last
  `window` answered positions that see the token; pooled over held
  non-protected neighbours |u - t| <= kernel//2 (avg: sum / kernel; max).
- expected-attention (defaults every 16, queries 128, sinks 4; arXiv
  2510.00636 and kvpress's ExpectedAttentionPress): above B, keep tokens < S
  and the top B - S others by softmax(scale mu.k + scale^2 k'Sigma k / 2)
  times ||v||, mu and Sigma (biased) over the rows of the last `queries`
  answered positions > S.

What is asserted (one line per failing (trace, spec, P), at most 20; exit 1):
- every compared query's output equals the reference's within
      |z - z_ref| <= 1e-4 |z_ref| + 1e-4 max_t |v_t|
  kvstream's logits are float32 dot products: a logit is off by at most
  ~d eps32 scale |q| |k| (~1e-6 on these traces, 1e-5 on the model trace),
  so each weight moves by that relative amount and the output, a convex
  combination of values, by at most ~2e-5 max_t |v_t|: the floor is five
  times that, the relative term covers the float32 storage of outputs;
- a decision (the worst kept key against the best evicted one) whose
  score margin is below 1e-4 relative (or whose scores are both below 1e-30
  yet not both exactly 0) is a reference *near-tie*: float32 scores may
  order those two tokens either way, so each (method, stream) is compared
  only up to its first near-tie (tova scope=layer: the layer's streams).
  An exact tie at the boundary (zeros: tokens nothing has scored yet; one
  max-pooled vote shared by neighbours) is decided by the index in float32
  too: its margin is the gap to the nearest other score above or below.
  topk (stateless) skips only a row whose k-th and (k+1)-th logits are
  closer than 1e-4 scale |q| max(|k_k|, |k_k+1|) (the float32 dot-product
  error scales with |q| |k|, not with the logit).  Near-ties are counted
  and printed, with kvstream's own count (results attribute
  /methods/<label>.near_ties) when it reports one;
- at least 80% of each method's queries are compared (a run that compares
  nothing cannot pass);
- P = 3 equals P = 1 within 1e-5 |z_1| + 1e-6 max_t |v_t| on the compared
  queries, and on every query when kvstream reports near_ties = 0.
A spec whose parameter kvstream does not know (an older kvstream) is one
failure line and is left out of the replay."""
import argparse
import os
import re
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvtest import load_trace64, mpi_cmd, run  # noqa: E402

OUT_REL, OUT_VFLOOR = 1e-4, 1e-4      # reference vs kvstream (float64 vs float32 logits)
P_REL, P_VFLOOR = 1e-5, 1e-6          # P = 3 vs P = 1 (same float32 logits, other sum order)
TIE_REL, TIE_ABS = 1e-4, 1e-30        # a decision margin below this is a near-tie
MIN_COMPARED = 0.80
# snapkv's decision points without every=: the multiples of its every=
# (default 16, docs/ALGORITHMS.md 4c), besides the query positions; it
# compresses by period
SNAPKV_EVERY = 16

# ---------------------------------------------------------------------------
# the reference: one stream (or one layer of streams) at a time, float64


class Stream:
    """One stream's float64 data and its position groups [(x, row0, row1)]."""

    def __init__(self, K, V, Q, pos, scale):
        self.K, self.V, self.Q, self.scale = K, V, Q, scale
        self.groups = []
        j = 0
        while j < len(pos):
            e = j
            while e < len(pos) and pos[e] == pos[j]:
                e += 1
            self.groups.append((int(pos[j]), j, e))
            j = e
        self.vmax = float(np.linalg.norm(V, axis=1).max())

    def logits(self, r0, r1, idx):
        return self.scale * (self.Q[r0:r1] @ self.K[idx].T)

    def answer(self, r0, r1, idx, out):
        """Softmax attention of rows r0..r1 over tokens idx into out; returns (m, l, weights)."""
        if len(idx) == 0:
            out[r0:r1] = 0.0
            return None
        a = self.logits(r0, r1, idx)
        m = a.max(axis=1, keepdims=True)
        e = np.exp(a - m)
        l = e.sum(axis=1, keepdims=True)
        w = e / l
        out[r0:r1] = w @ self.V[idx]
        return m, l, w


def decision_points(st, every):
    """Query positions and the positive multiples of `every` up to the last query position."""
    qpos = [g[0] for g in st.groups]
    pts = set(qpos)
    if every:
        pts.update(range(every, qpos[-1] + 1, every))
    return sorted(pts), {g[0]: g for g in st.groups}


def top_keys(idx, score, keep, log=False):
    """The `keep` best (score, index) keys of tokens idx: (kept indices sorted, margin or None).
    margin: worst kept vs best evicted score, relative to the larger; 0 marks a near-tie.
    log: the scores are logs, and the margin their difference (the scores' relative gap)."""
    order = np.lexsort((idx, score))[::-1]          # best first: score, then the newer index
    kept = np.sort(idx[order[:keep]])
    if keep >= len(idx):
        return kept, None
    if keep == 0:
        return kept, None                           # nothing kept: no comparison between keys
    gap = (lambda hi, lo: hi - lo) if log else rel_gap
    sk, se = score[order[keep - 1]], score[order[keep]]
    if sk > se:
        return kept, gap(sk, se)
    # an exact tie at the boundary: zeros (nothing scored those tokens) or one
    # shared max-pooled vote, equal in float32 too, so the index decides; the
    # decision still turns on the nearest other scores above and below it
    above, below = score[score > sk], score[score < sk]
    gaps = ([gap(above.min(), sk)] if len(above) else []) + ([gap(sk, below.max())] if len(below) else [])
    return kept, min(gaps) if gaps else None


def rel_gap(hi, lo):
    """hi - lo relative to the larger; 0 (a near-tie) when both are below TIE_ABS, where float32
    may have flushed a weight to zero."""
    big = max(abs(hi), abs(lo))
    return 0.0 if big < TIE_ABS else (hi - lo) / big


class Result:
    def __init__(self, S, m, dv):
        self.out = np.zeros((S, m, dv))
        self.ok = np.ones((S, m), bool)             # rows compared
        self.ties = 0

    def tie_from(self, streams, row0):
        """A near-tie at the decision before row0: stop comparing these streams there."""
        self.ties += 1
        for s in streams:
            self.ok[s, row0:] = False


def ref_window(sts, W, sinks=0):
    res = Result(len(sts), sts[0].Q.shape[0], sts[0].V.shape[1])
    for s, st in enumerate(sts):
        for x, r0, r1 in st.groups:
            idx = np.union1d(np.arange(min(sinks, x)), np.arange(max(0, x - W), x))
            st.answer(r0, r1, idx, res.out[s])
    return res


def ref_topk(sts, k):
    res = Result(len(sts), sts[0].Q.shape[0], sts[0].V.shape[1])
    for s, st in enumerate(sts):
        for x, r0, r1 in st.groups:
            for r in range(r0, r1):
                idx = np.arange(x)
                if x > k:
                    a = st.logits(r, r + 1, idx)[0]
                    o = np.argsort(-a, kind="stable")
                    # float32 logit error scales with |q| |k|, not with |a|
                    bound = st.scale * np.linalg.norm(st.Q[r]) * max(np.linalg.norm(st.K[o[k - 1]]),
                                                                     np.linalg.norm(st.K[o[k]]))
                    if a[o[k - 1]] - a[o[k]] < TIE_REL * bound:
                        res.ties += 1
                        res.ok[s, r] = False
                    idx = np.sort(o[:k])
                st.answer(r, r + 1, idx, res.out[s])
    return res


def ref_h2o(sts, B, R=None, E=64):
    R = B // 2 if R is None else R
    H = B - R
    res = Result(len(sts), sts[0].Q.shape[0], sts[0].V.shape[1])
    for s, st in enumerate(sts):
        n = st.K.shape[0]
        score = np.zeros(n)
        heavy = np.zeros(0, np.int64)
        pts, at = decision_points(st, E)
        xp = 0
        for x in pts:
            cand = np.concatenate([heavy, np.arange(max(0, xp - R), max(0, x - R))])
            heavy, margin = top_keys(cand, score[cand], H)
            if margin is not None and margin < TIE_REL:
                res.tie_from([s], at[x][1] if x in at else next_row(st, x))
            if x in at:
                _, r0, r1 = at[x]
                held = np.concatenate([heavy, np.arange(max(0, x - R), x)])
                ans = st.answer(r0, r1, held, res.out[s])
                if ans is not None:
                    score[held] += ans[2].sum(axis=0)
            xp = x
    return res


def next_row(st, x):
    """First row at a position >= x (the rows a decision at x can change)."""
    for p, r0, _ in st.groups:
        if p >= x:
            return r0
    return st.Q.shape[0]


def ref_tova(sts, B, E=64, scope="head", n_kv_heads=None):
    S = len(sts)
    res = Result(S, sts[0].Q.shape[0], sts[0].V.shape[1])
    if scope == "layer":
        units = [list(range(u, min(S, u + n_kv_heads))) for u in range(0, S, n_kv_heads)]
    else:
        units = [[s] for s in range(S)]
    for unit in units:
        st0 = sts[unit[0]]
        held = np.zeros(0, np.int64)
        last = None                                  # per stream of the unit: (r0, r1, m, l) of the last answer
        pts, at = decision_points(st0, E)
        xp = 0
        for x in pts:
            cand = np.concatenate([held, np.arange(xp, x)])
            if len(cand) > B:
                score = np.zeros(len(cand))
                if last is not None:
                    for s, (r0, r1, m, l) in zip(unit, last):
                        w = np.exp(sts[s].logits(r0, r1, cand) - m) / l
                        score += w.mean(axis=0)
                    score /= len(unit)
                held, margin = top_keys(cand, score, B)
                if margin is not None and margin < TIE_REL:
                    res.tie_from(unit, at[x][1] if x in at else next_row(st0, x))
            else:
                held = cand
            if x in at:
                _, r0, r1 = at[x]
                last = []
                for s in unit:
                    m, l, _ = sts[s].answer(r0, r1, held, res.out[s])
                    last.append((r0, r1, m, l))
            xp = x
    return res


def ref_expected_attention(sts, B, E=16, W=128, S=4, cov=True, vnorm=True):
    """Expected Attention (arXiv 2510.00636, kvpress's ExpectedAttentionPress): the rows of the last W
    query positions > S form a Gaussian N(mu, Sigma) (biased covariance); a token's score is
    softmax_t(scale mu.k_t + scale^2 k_t^T Sigma k_t / 2) * ||v_t||; the first S tokens are kept."""
    res = Result(len(sts), sts[0].Q.shape[0], sts[0].V.shape[1])
    for s, st in enumerate(sts):
        held = np.zeros(0, np.int64)
        win = []                                     # (r0, r1) of the last W statistics positions
        pts, at = decision_points(st, E)
        xp = 0
        for x in pts:
            held = np.concatenate([held, np.arange(xp, x)])
            if len(held) > B:
                sink, oth = held[held < S], held[held >= S]
                score = np.zeros(len(oth))
                if win:
                    Qw = np.concatenate([st.Q[r0:r1] for r0, r1 in win])
                    mu = Qw.mean(axis=0)
                    K = st.K[oth]
                    a = st.scale * (K @ mu)
                    if cov:
                        C = Qw - mu
                        sig = C.T @ C / len(Qw)
                        a += 0.5 * st.scale ** 2 * np.einsum("ti,ij,tj->t", K, sig, K)
                    # the log of kvpress's score, softmax(a) ||v||: its scores underflow far below the
                    # kept ones, where a relative margin would flag ties that float32 orders right
                    score = a - a.max() - np.log(np.exp(a - a.max()).sum())
                    if vnorm:
                        with np.errstate(divide="ignore"):
                            score += np.log(np.linalg.norm(st.V[oth], axis=1))
                kept, margin = top_keys(oth, score, B - len(sink), log=True)
                if margin is not None and margin < TIE_REL:
                    res.tie_from([s], at[x][1] if x in at else next_row(st, x))
                held = np.concatenate([sink, kept])
            if x in at:
                _, r0, r1 = at[x]
                st.answer(r0, r1, held, res.out[s])
                if x > S:
                    win = (win + [(r0, r1)])[-W:]
            xp = x
    return res


def pool_scores(idx, vote, k, how):
    """Pool votes over index neighbours |u - t| <= k//2 among idx (absent positions count 0)."""
    if len(idx) == 0:
        return vote
    h = k // 2
    lo = int(idx.min())
    dense = np.zeros(int(idx.max()) - lo + 1 + 2 * h)
    dense[idx - lo + h] = vote
    win = np.lib.stride_tricks.sliding_window_view(dense, 2 * h + 1)[idx - lo]
    return win.sum(axis=1) / k if how == "avg" else win.max(axis=1)


def ref_snapkv(sts, B, w=32, k=5, pool="avg", T=64, E=None):
    """E: decision points at the multiples of E (kvstream's every=) instead of T's."""
    assert w < B, "snapkv needs window < tokens"
    res = Result(len(sts), sts[0].Q.shape[0], sts[0].V.shape[1])
    for s, st in enumerate(sts):
        held = np.zeros(0, np.int64)
        buf = []                                     # (position, r0, r1, m, l) of the last w answered positions
        pts, at = decision_points(st, E or T)
        xp = 0
        for x in pts:
            held = np.concatenate([held, np.arange(xp, x)])
            if len(held) > B:
                Bc = max(w, B - T)
                prot = held[held >= x - w]
                oth = held[held < x - w]
                vote = np.zeros(len(oth))
                for q, r0, r1, m, l in buf:
                    see = oth < q
                    if see.any():
                        vote[see] += (np.exp(st.logits(r0, r1, oth[see]) - m) / l).sum(axis=0)
                kept, margin = top_keys(oth, pool_scores(oth, vote, k, pool), Bc - len(prot))
                if margin is not None and margin < TIE_REL:
                    res.tie_from([s], at[x][1] if x in at else next_row(st, x))
                held = np.concatenate([kept, prot])
            if x in at:
                _, r0, r1 = at[x]
                m, l, _ = st.answer(r0, r1, held, res.out[s])
                buf = (buf + [(x, r0, r1, m, l)])[-w:]
            xp = x
    return res


# ---------------------------------------------------------------------------
# specs: kvstream syntax -> reference


def parse_spec(spec):
    name, _, rest = spec.partition(":")
    kv = dict(p.split("=", 1) for p in rest.split(",")) if rest else {}
    return name, kv


def reference(spec, sts, n_kv_heads):
    name, kv = parse_spec(spec)
    i = lambda key, dflt: int(kv.get(key, dflt))  # noqa: E731
    if name == "window":
        return ref_window(sts, i("W", 1024))
    if name == "sinks":
        return ref_window(sts, i("W", 1020), sinks=i("S", 4))
    if name == "topk":
        return ref_topk(sts, i("k", 64))
    if name == "h2o":
        B = i("tokens", 1024)
        return ref_h2o(sts, B, i("recent", B // 2), i("every", 64))
    if name == "tova":
        return ref_tova(sts, i("tokens", 1024), i("every", 64), kv.get("scope", "head"), n_kv_heads)
    if name == "snapkv":
        return ref_snapkv(sts, i("tokens", 1024), i("window", 32), i("kernel", 5), kv.get("pool", "avg"),
                          i("period", 64), int(kv["every"]) if "every" in kv else SNAPKV_EVERY)
    if name == "expected-attention":
        return ref_expected_attention(sts, i("tokens", 1024), i("every", 16), i("queries", 128), i("sinks", 4),
                                      kv.get("cov", "yes") == "yes", kv.get("vnorm", "yes") == "yes")
    raise ValueError(spec)


def load_streams(trace):
    K, V, Q, pos, scale, attrs = load_trace64(trace)
    nkv = int(attrs["n_kv_heads"]) if "n_kv_heads" in attrs else None
    return [Stream(K[s], V[s], Q[s], pos, scale) for s in range(K.shape[0])], nkv


# ---------------------------------------------------------------------------
# the check


def known_params(exe):
    """{method: set of parameter names} from `kvstream methods`."""
    r = run([exe, "methods"])
    params, cur = {}, None
    for line in r.stdout.splitlines():
        m = re.match(r"^  (\S+)\s+\S", line)
        if m:
            cur = m.group(1)
            params[cur] = {"name"}
            continue
        m = re.match(r"^      (\w+)\s+\w+\s+default", line)
        if m and cur:
            params[cur].add(m.group(1))
    return params


def traces(exe, work):
    gen = [
        ("sparse", ["--streams", "2", "--tokens", "4000", "--dim", "16", "--queries", "100", "--chunk", "250",
                    "--seed", "5"]),
        ("every", ["--streams", "2", "--tokens", "1000", "--dim", "16", "--every-position", "--chunk", "125",
                   "--seed", "7"]),
    ]
    out = []
    for name, args in gen:
        path = os.path.join(work, name + ".h5")
        r = run(mpi_cmd(1, exe, "gen", "--kind", "gaussian", *args, "-o", path))
        if r.returncode:
            sys.exit("FAIL: gen %s: %s" % (name, r.stderr.strip()))
        out.append((name, path, None))
    model = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "stories260K.bin")
    path = os.path.join(work, "rec.h5")
    r = run([exe, "record", "--model", model, "--tokens", "256", "-o", path])
    if r.returncode:
        sys.exit("FAIL: record: %s" % r.stderr.strip())
    out.append(("rec", path, "32"))
    return out


def specs_for(name, n):
    """Budgets: >= n (exact), tiny (1-8), middle; the paper defaults and non-default parameters."""
    mid, big = (200, 1000) if name != "rec" else (24, 96)
    s = ["window:W=%d" % n, "window:W=1", "window:W=%d" % mid,
         "sinks:S=4,W=%d" % n, "sinks:S=4,W=3", "sinks:S=1,W=%d" % mid,
         "topk:k=1", "topk:k=%d" % mid,
         "h2o:tokens=%d" % n, "h2o:tokens=1", "h2o:tokens=8,recent=2",
         "h2o:tokens=%d,recent=0,every=16" % mid, "h2o:tokens=%d,recent=%d,every=4" % (mid, mid // 4),
         "tova:tokens=%d" % n, "tova:tokens=1", "tova:tokens=8", "tova:tokens=%d" % mid,
         "tova:tokens=%d,every=16" % big,
         "snapkv:tokens=%d" % n, "snapkv:tokens=8,window=4,kernel=3,period=4",
         "snapkv:tokens=%d,window=16,kernel=7,pool=max,period=32,every=8" % mid,
         "snapkv:tokens=%d" % (mid + 40), "snapkv:tokens=%d,window=8,kernel=5,pool=avg,period=16" % big]
    s += ["expected-attention:tokens=%d" % n, "expected-attention:tokens=5,sinks=4",
          "expected-attention:tokens=%d" % mid, "expected-attention:tokens=%d,queries=8,every=4" % mid,
          "expected-attention:tokens=%d,sinks=0,cov=no,vnorm=no" % mid, "expected-attention:tokens=%d,every=32" % big]
    if name == "rec":
        s += ["tova:tokens=%d,scope=layer" % mid, "tova:tokens=8,scope=layer"]
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exe", help="the kvstream binary")
    ap.add_argument("--build", default="build", help="build directory holding kvstream (when --exe is not given)")
    ap.add_argument("--work", default="evictors-work", help="directory for traces and results")
    ap.add_argument("--only", help="check only these methods (comma-separated: window,sinks,topk,h2o,tova,snapkv,expected-attention)")
    ap.add_argument("--np", default="1,3", help="rank counts (the first is the one P-equality is measured against)")
    ap.add_argument("-v", action="store_true", help="print every compared query")
    a = ap.parse_args()
    exe = a.exe or os.path.join(a.build, "kvstream")
    nps = [int(p) for p in a.np.split(",")]
    only = set(a.only.split(",")) if a.only else None
    os.makedirs(a.work, exist_ok=True)
    fails = []
    fail = fails.append
    params = known_params(exe)
    compared, total = {}, {}

    for tname, trace, shard in traces(exe, a.work):
        sts, nkv = load_streams(trace)
        n = sts[0].K.shape[0]
        specs = []
        for spec in specs_for(tname, n):
            meth, kv = parse_spec(spec)
            if only and meth not in only:
                continue
            unknown = sorted(set(kv) - params.get(meth, set()))
            if unknown:
                fail("%s: kvstream's %s has no parameter %s (not the EVICT.md semantics?): not run"
                     % (spec, meth, ",".join(unknown)))
                continue
            specs.append(spec)
        if not specs:
            continue
        outs, ties = {}, {}
        for P in nps:
            res = os.path.join(a.work, "%s-np%d.h5" % (tname, P))
            cmd = mpi_cmd(P, exe, "replay", trace, "--methods", ",".join(specs), "--save-outputs", "-q",
                          "--no-bound-ratio", "-o", res)
            if shard:
                cmd[-2:-2] = ["--shard-chunk", shard]
            t0 = time.time()
            r = run(cmd, timeout=600)
            print("%s: replay of %d specs at np=%d: %.1f s" % (tname, len(specs), P, time.time() - t0))
            if r.returncode:
                sys.exit("FAIL: %s np=%d replay failed: %s" % (tname, P, r.stderr.strip()))
            with h5py.File(res, "r") as f:
                for spec in specs:
                    g = f["methods"][spec]
                    outs[spec, P] = g["outputs"][...].astype(np.float64)
                    ties[spec, P] = int(g.attrs["near_ties"]) if "near_ties" in g.attrs else None
        vmax = np.array([st.vmax for st in sts])
        tref = 0.0
        for spec in specs:
            meth = parse_spec(spec)[0]
            t0 = time.time()
            ref = reference(spec, sts, nkv)
            tref += time.time() - t0
            zr = ref.out
            nz = np.linalg.norm(zr, axis=2)
            tol = OUT_REL * nz + OUT_VFLOOR * vmax[:, None]
            nbad = {}
            for P in nps:
                z = outs[spec, P]
                err = np.linalg.norm(z - zr, axis=2)
                bad = ref.ok & ~(err <= tol)
                nbad[P] = int(bad.sum())
                if nbad[P]:
                    s, j = first_bad(bad)
                    fail("%s %s np=%d: %d queries differ from the reference; first: stream %d query %d (pos %d) "
                         "|z - z_ref| = %.3g > %.3g (|z_ref| = %.3g)"
                         % (tname, spec, P, nbad[P], s, j, pos_of(sts[0], j), err[s, j], tol[s, j], nz[s, j]))
                if a.v:
                    for s, j in zip(*np.nonzero(ref.ok)):
                        print("  %s %s np=%d s=%d q=%d |z - z_ref| = %.3g (tol %.3g)"
                              % (tname, spec, P, s, j, err[s, j], tol[s, j]))
            # P-invariance against the first P
            z1 = outs[spec, nps[0]]
            for P in nps[1:]:
                z = outs[spec, P]
                mask = ref.ok.copy()
                if ties[spec, P] == 0 and ties[spec, nps[0]] == 0:
                    mask[:] = True
                d = np.linalg.norm(z - z1, axis=2)
                ptol = P_REL * np.linalg.norm(z1, axis=2) + P_VFLOOR * vmax[:, None]
                bad = mask & ~(d <= ptol)
                nbad[P, "P"] = int(bad.sum())
                if nbad[P, "P"]:
                    s, j = first_bad(bad)
                    fail("%s %s: %d queries differ between np=%d and np=%d; first: stream %d query %d (pos %d) "
                         "|z_P - z_1| = %.3g > %.3g"
                         % (tname, spec, nbad[P, "P"], P, nps[0], s, j, pos_of(sts[0], j), d[s, j], ptol[s, j]))
            c, t = int(ref.ok.sum()), ref.ok.size
            compared[meth] = compared.get(meth, 0) + c
            total[meth] = total.get(meth, 0) + t
            kt = " ".join("np=%d:%s" % (P, "-" if ties[spec, P] is None else ties[spec, P]) for P in nps)
            wrong = " ".join(["np=%d:%d" % (P, nbad[P]) for P in nps] +
                             ["np=%dvs%d:%d" % (P, nps[0], nbad[P, "P"]) for P in nps[1:]])
            print("%-6s %-50s compared %5d/%5d, ref near-ties %d, kvstream near_ties %s; wrong %s"
                  % (tname, spec, c, t, ref.ties, kt, wrong))
        print("%s: reference %.1f s" % (tname, tref))
    for meth in sorted(total):
        frac = compared[meth] / total[meth]
        print("%-7s compared %d of %d queries (%.1f%%)" % (meth, compared[meth], total[meth], 100 * frac))
        if frac < MIN_COMPARED:
            fail("%s: only %.1f%% of its queries could be compared (< %d%%): too many near-ties"
                 % (meth, 100 * frac, 100 * MIN_COMPARED))
    if not total:
        fail("nothing was compared")
    if fails:
        for line in fails[:20]:
            print("FAIL: " + line)
        if len(fails) > 20:
            print("FAIL: ... and %d more" % (len(fails) - 20))
        sys.exit(1)
    print("PASS")


def first_bad(bad):
    """(stream, query) of the earliest flagged query (by query, then stream)."""
    s, j = np.nonzero(bad)
    i = np.lexsort((s, j))[0]
    return int(s[i]), int(j[i])


def pos_of(st, j):
    for p, r0, r1 in st.groups:
        if r0 <= j < r1:
            return p
    return -1


if __name__ == "__main__":
    main()
