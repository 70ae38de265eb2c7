#!/usr/bin/python3
"""SubGen's results and checkpoints, bitwise, between two builds.

usage: compare-subgen-builds.py OLD_KVSTREAM NEW_KVSTREAM WORKDIR

For a refactoring of src/methods/subgen/ (or its kernels) that must change
no bit: build the base commit and the change (e.g. `git worktree add` of the
base, built into build-old), then run this.  On three synthetic traces (d 16;
d 20 with dv 12; d 19 with more natural clusters than the cap, so delta
doubles and clusters merge) and at 1 and 2 ranks, for subgen and
window+subgen at several parameter sets, both estimators, index 0 and 1,
budget= and clusters=:
- full replays with --save-outputs: every dataset under /methods equal
  (np.array_equal) and every attribute equal except timings;
- a replay stopped inside a batch (--stop-after) with --checkpoint: the two
  checkpoint files hold equal attributes and /offsets, and equal /state
  bytes except each method's two timers (t_ingest, t_query: wall-clock
  seconds the driver saves before the method's state, which differ between
  any two runs even of one binary).  The frame is parsed as
  src/replay/ckptstate.c writes it (magic, shard position, the batch walk,
  then per method peak, the timers and per stream a length-prefixed state;
  the exact reference, listed last, saves token counts); every method
  state, subgen's and window+subgen's included, is compared byte for byte;
- the new build resumes the old build's checkpoint: its results equal the
  old build's uninterrupted run.
Not a ctest: it needs two builds.  Prints one line per check, exits 1 at
the first difference."""
import os
import re
import subprocess
import sys

import h5py
import numpy as np

old, new, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]), os.path.abspath(sys.argv[3])
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="2")
TIMING = re.compile(r"seconds|time|rss|floor|per_second|threads")
TRACES = {
    "a": ["--kind", "clustered", "--clusters", "12", "--spread", "0.2", "--streams", "2", "--tokens", "6000",
          "--dim", "16", "--queries", "90", "--chunk", "512", "--seed", "9"],
    "b": ["--kind", "gaussian", "--streams", "2", "--tokens", "3000", "--dim", "20", "--dv", "12",
          "--queries", "60", "--chunk", "256", "--seed", "3"],
    "c": ["--kind", "clustered", "--clusters", "80", "--spread", "0.05", "--streams", "2", "--tokens", "4000",
          "--dim", "19", "--queries", "70", "--chunk", "512", "--seed", "5"],
}
METHOD_LIST = [
    "subgen",
    "subgen:delta=0.5,t=8,s=16,seed=3,index=0,name=sg-i0",
    "subgen:delta=0.5,t=8,s=16,seed=3,name=sg-i1",
    "subgen:estimator=joint,name=sg-joint",
    "subgen:delta=0.05,t=4,s=32,clusters=24,name=sg-cap",
    "subgen:estimator=joint,delta=0.02,t=3,clusters=20,index=0,name=sg-jcap",
    "subgen:budget=10%,name=sg-b10",
    "subgen:estimator=joint,budget=5%,name=sg-jb5",
    "window+subgen",
    "window+subgen:W=64,delta=0.5,t=8,s=16,name=wsg-2",
    "window+subgen:W=32,estimator=joint,clusters=16,delta=0.1,name=wsg-jcap",
]
METHODS = ",".join(METHOD_LIST)
checks = 0


def fail(msg):
    print("DIFFERENT: " + msg)
    sys.exit(1)


def run(exe, cwd, np_, *args, ok=(0,)):
    cmd = ["mpirun", "--oversubscribe", "-np", str(np_), exe, *args] if np_ > 1 else [exe, *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=1200)
    if r.returncode not in ok:
        fail("%s in %s exited %d: %s" % (" ".join(cmd), cwd, r.returncode, r.stderr[-2000:]))
    return r


def attrs_equal(a, b, what, skip_timing):
    ka = {k for k in a.attrs if not (skip_timing and TIMING.search(k))}
    kb = {k for k in b.attrs if not (skip_timing and TIMING.search(k))}
    if ka != kb:
        fail("%s: attributes %s vs %s" % (what, sorted(ka), sorted(kb)))
    for k in ka:
        if not np.array_equal(np.asarray(a.attrs[k]), np.asarray(b.attrs[k])):
            fail("%s: attribute %s: %r vs %r" % (what, k, a.attrs[k], b.attrs[k]))


def files_equal(fa, fb, what, skip_timing):
    """every dataset and attribute (timings skipped for results), exactly"""
    with h5py.File(fa, "r") as a, h5py.File(fb, "r") as b:
        na, nb = [], []
        a.visit(na.append)
        b.visit(nb.append)
        if na != nb:
            fail("%s: objects %s vs %s" % (what, na, nb))
        attrs_equal(a, b, what + " /", skip_timing)
        n = 0
        for name in na:
            x, y = a[name], b[name]
            attrs_equal(x, y, "%s %s" % (what, name), skip_timing)
            if isinstance(x, h5py.Dataset):
                if x.dtype != y.dtype or not np.array_equal(x[...], y[...]):
                    fail("%s: dataset %s differs" % (what, name))
                n += 1
    return n


def i64(b, at):
    if at < 0 or at + 8 > len(b):
        return -1  # past the end: the frame does not parse this way
    return int(np.frombuffer(b[at:at + 8], dtype="<i8")[0])


def timer_spans(b, lo, hi, M, S, opt):
    """the byte ranges of the M methods' timers in one rank's segment
    [lo, hi), walking the frame; opt: which optional walk arrays (gsend,
    opn) are present.  None if the frame does not parse that way."""
    at = lo + 16  # magic, shard position
    walked = i64(b, at)
    at += 8
    if walked > 0:
        at += 24  # nu, staged, u0
        for _ in range(4 + opt[0] + opt[1]):  # length-prefixed arrays
            n = i64(b, at)
            if n < 0 or at + 8 + n > hi:
                return None
            at += 8 + n
    spans = []
    for m in range(M):
        if at + 24 > hi:
            return None
        spans.append((at + 8, at + 24))  # after peak: t_ingest, t_query
        at += 24
        for _ in range(S):
            if m == M - 1:  # the exact reference: kept tokens only
                at += 8
                continue
            n = i64(b, at)
            if n < 0 or at + 8 + n > hi:
                return None
            at += 8 + n
    return spans if at <= hi else None


def checkpoints_equal(fa, fb, what, M):
    """attributes and /offsets equal; /state equal but for the timers"""
    with h5py.File(fa, "r") as a, h5py.File(fb, "r") as b:
        attrs_equal(a, b, what + " /", False)
        off = a["offsets"][...]
        if not np.array_equal(off, b["offsets"][...]):
            fail("%s: /offsets differ" % what)
        sa, sb = a["state"][...].tobytes(), b["state"][...].tobytes()
        S = int(a.attrs["streams"])
    if len(sa) != len(sb):
        fail("%s: /state of %d vs %d bytes" % (what, len(sa), len(sb)))
    if len(off) < 2 or off[0] != 0 or off[-1] != len(sa):
        fail("%s: /offsets %s do not frame %d bytes" % (what, off, len(sa)))
    ma, mb = bytearray(sa), bytearray(sb)
    for lo, hi in zip(off[:-1], off[1:]):  # one segment per rank
        for opt in ((0, 0), (1, 0), (0, 1), (1, 1)):
            spans = timer_spans(sa, int(lo), int(hi), M, S, opt)
            if spans is None:
                continue
            ta, tb = bytearray(ma), bytearray(mb)
            for x, y in spans:
                ta[x:y] = tb[x:y] = bytes(y - x)
            if ta[lo:hi] == tb[lo:hi]:
                ma, mb = ta, tb
                break
        else:
            fail("%s: /state differs beyond the timers (rank segment at %d)" % (what, lo))
    return len(sa)


def main():
    global checks
    for d in ("old", "new", "cross"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    for t, gen in TRACES.items():
        trace = os.path.join(work, t + ".h5")
        run(old, work, 1, "gen", *gen, "-o", trace)
        for np_ in (1, 2):
            tag = "%s-np%d" % (t, np_)
            base = [os.path.join("..", t + ".h5"), "--methods", METHODS, "--batch", "10", "--save-outputs",
                    "--quiet", "--seed", "4"]
            # uninterrupted
            for exe, d in ((old, "old"), (new, "new")):
                run(exe, os.path.join(work, d), np_, "replay", *base, "-o", tag + ".h5")
            n = files_equal(os.path.join(work, "old", tag + ".h5"), os.path.join(work, "new", tag + ".h5"),
                            tag + " results", True)
            print("same: %s results (%d datasets: outputs, rel_error, bound_ratio per method; attributes "
                  "but timings)" % (tag, n))
            checks += 1
            # stopped inside a batch, checkpointed
            stop = "37" if t != "b" else "23"
            for exe, d in ((old, "old"), (new, "new")):
                run(exe, os.path.join(work, d), np_, "replay", *base, "-o", tag + "-stop.h5", "--stop-after", stop,
                    "--checkpoint", tag + ".ckpt", ok=(3,))
            n = checkpoints_equal(os.path.join(work, "old", tag + ".ckpt"), os.path.join(work, "new", tag + ".ckpt"),
                                  tag + " checkpoint", len(METHOD_LIST) + 1)  # + exact
            print("same: %s checkpoint after %s queries (%d state bytes equal but the timers, every attribute, "
                  "/offsets)" % (tag, stop, n))
            checks += 1
            # the new build resumes a checkpoint the old build wrote (stopped as above)
            cross = os.path.join(work, "cross")
            run(old, cross, np_, "replay", *base, "-o", tag + "-stop.h5", "--stop-after", stop, "--checkpoint",
                tag + ".ckpt", ok=(3,))
            run(new, cross, np_, "replay", *base, "-o", tag + "-stop.h5", "--resume",
                os.path.join(cross, tag + ".ckpt"))
            files_equal(os.path.join(work, "old", tag + ".h5"), os.path.join(cross, tag + "-stop.h5"),
                        tag + " new build resumed from an old checkpoint", True)
            print("same: %s the new build resumed the old build's checkpoint: results equal the old uninterrupted "
                  "run" % tag)
            checks += 1
    print("compare-subgen-builds: %d passed, 0 failed" % checks)


main()
