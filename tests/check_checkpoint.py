#!/usr/bin/python3
"""Checkpoint / restart.

usage: check_checkpoint.py KVSTREAM WORKDIR NP

Stops come from `replay --stop-after q`: rank 0 acts as if SIGTERM arrived once
q queries are done (deterministic interruption points); one case also sends
a real SIGUSR1 to a single rank's process, once the replay says it has
started (KVSTREAM_READY=1), never after a guessed sleep.
- interrupted runs (once, twice, at several points) resumed with --resume
  give results bitwise identical to an uninterrupted run: outputs, rel_error,
  bound_ratio, memory_bytes, peak_memory_bytes, clusters, for every method
  of the registry with full semantics (`kvstream methods --specs`);
- the stop exits with status 3 on every rank and names the checkpoint;
- --checkpoint-every writes checkpoints without stopping;
- a checkpoint from another rank count, trace or method list is refused with
  a clear message; a half-written FILE.tmp (a crash while checkpointing)
  leaves FILE usable; a truncated checkpoint is refused;
- written and read in pieces of KVSTREAM_CKPT_PIECE=13 bytes (every state
  crosses many piece boundaries, none aligned), a checkpoint resumes
  bitwise too, also when the resume uses the default piece (the file does
  not depend on it); a bad KVSTREAM_CKPT_PIECE is refused."""
import os
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np

from kvtest import fail, method_specs, methods_arg, mpi_cmd, mpi_env, run, signal_one_rank

exe, work, P = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(work, exist_ok=True)
METHODS = methods_arg(method_specs(exe, semantics="full"))
checks = 0


def path(name):
    return os.path.join(work, name)


trace = path("ck.h5")
r = run(mpi_cmd(P, exe, "gen", "--kind", "clustered", "--clusters", "12", "--spread", "0.2", "--streams", "2",
                "--tokens", "6000", "--dim", "16", "--queries", "90", "--chunk", "512", "--seed", "9", "-o", trace))
if r.returncode:
    fail(r.stderr)


def replay(out, *extra, stop=None, methods=METHODS, np_=P, tr=trace, piece=None):
    if stop is not None:
        extra = extra + ("--stop-after", str(stop))
    cmd = mpi_cmd(np_, exe, "replay", tr, "--methods", methods, "--batch", "10", "--save-outputs", "--quiet",
                  "--seed", "4", "-o", out, *extra)
    env = mpi_env()
    if piece is not None:
        env["KVSTREAM_CKPT_PIECE"] = str(piece)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    except subprocess.TimeoutExpired:
        fail("replay timed out (hang?)")


def same(a, b, what):
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        for g in x["methods"]:
            for d in ("outputs", "rel_error", "bound_ratio"):
                if not np.array_equal(x["methods"][g][d][...], y["methods"][g][d][...]):
                    fail("%s: /methods/%s/%s differs from the uninterrupted run" % (what, g, d))
            for a_ in ("memory_bytes", "peak_memory_bytes", "clusters", "kept_tokens"):
                if x["methods"][g].attrs[a_] != y["methods"][g].attrs[a_]:
                    fail("%s: %s of %s differs: %s vs %s" % (what, a_, g, x["methods"][g].attrs[a_], y["methods"][g].attrs[a_]))


ref = path("ref.h5")
r = replay(ref)
if r.returncode:
    fail("uninterrupted replay failed: " + r.stderr)

# interrupted once at several points, and twice
for stops in ((10,), (55,), (75,), (25, 67)):
    out, ck = path("int-%s.h5" % "-".join(map(str, stops))), path("int-%s.ckpt" % "-".join(map(str, stops)))
    r = replay(out, "--checkpoint", ck, stop=stops[0])
    if r.returncode != 3 or "checkpoint written to " + ck not in r.stderr:
        fail("stop at %d: exit %d, stderr %s" % (stops[0], r.returncode, r.stderr))
    for s in stops[1:]:
        r = replay(out, "--checkpoint", ck, "--resume", ck, stop=s)
        if r.returncode != 3:
            fail("second stop at %d: exit %d: %s" % (s, r.returncode, r.stderr))
    r = replay(out, "--checkpoint", ck, "--resume", ck)
    if r.returncode:
        fail("resume failed: " + r.stderr)
    same(ref, out, "interrupted at %s" % (stops,))
    print("ok: interrupted at %s and resumed: bitwise identical" % (stops,))
    checks += 1

# tiny pieces: written and read 13 bytes at a time (two stops, the second
# inside a batch), the last resume with the default piece
out, ck = path("piece.h5"), path("piece.ckpt")
r = replay(out, "--checkpoint", ck, stop=25, piece=13)
if r.returncode != 3:
    fail("13-byte pieces, stop at 25: exit %d: %s" % (r.returncode, r.stderr))
r = replay(out, "--checkpoint", ck, "--resume", ck, stop=67, piece=13)
if r.returncode != 3:
    fail("13-byte pieces, resume and stop at 67: exit %d: %s" % (r.returncode, r.stderr))
r = replay(out, "--checkpoint", ck, "--resume", ck)
if r.returncode:
    fail("resume of a 13-byte-piece checkpoint failed: " + r.stderr)
same(ref, out, "checkpoints in 13-byte pieces")
print("ok: checkpoints written and read in 13-byte pieces resume bitwise identically")
checks += 1
r = replay(path("piece-bad.h5"), "--checkpoint", ck, piece="0")
line = [l for l in r.stderr.splitlines() if l.startswith("kvstream")]
if r.returncode != 2 or not line or "KVSTREAM_CKPT_PIECE" not in line[0]:
    fail("KVSTREAM_CKPT_PIECE=0: exit %d: %s" % (r.returncode, r.stderr))
print("ok: refused: " + line[0])
checks += 1

# periodic checkpoints, no stop; resuming from the last one finishes identically
ck = path("every.ckpt")
r = replay(path("every.h5"), "--checkpoint", ck, "--checkpoint-every", "30")
if r.returncode or not os.path.exists(ck):
    fail("--checkpoint-every: exit %d, checkpoint exists: %s" % (r.returncode, os.path.exists(ck)))
with h5py.File(ck, "r") as f:
    if int(f.attrs["next_query"]) != 60:
        fail("last periodic checkpoint at %d queries, expected 60" % f.attrs["next_query"])
r = replay(path("every.h5"), "--resume", ck)  # the same -o: rows >= 60 are rewritten
if r.returncode:
    fail(r.stderr)
same(ref, path("every.h5"), "resumed from a periodic checkpoint")
checks += 1

# a crash while writing: FILE.tmp is garbage, FILE is the last good one
ck = path("crash.ckpt")
r = replay(path("crash.h5"), "--checkpoint", ck, stop=40)
with open(ck + ".tmp", "wb") as f:
    f.write(b"\x89HDF\r\n\x1a\n" + os.urandom(3000))
r = replay(path("crash.h5"), "--resume", ck)
if r.returncode:
    fail("resume next to a broken .tmp failed: " + r.stderr)
same(ref, path("crash.h5"), "resume after a crash mid-checkpoint")
checks += 1


def refused(args, expect, np_=P, tr=trace, methods=METHODS):
    r = replay(path("refused.h5"), *args, np_=np_, tr=tr, methods=methods)
    line = [l for l in r.stderr.splitlines() if l.startswith("kvstream")]
    if r.returncode != 2 or not line or expect not in line[0]:
        fail("expected exit 2 with %r, got %d: %s" % (expect, r.returncode, r.stderr))
    print("ok: refused: " + line[0])


ck = path("mismatch.ckpt")
r = replay(path("mismatch.h5"), "--checkpoint", ck, stop=30)
refused(["--resume", ck], "ranks", np_=P % 4 + 1)
other = path("other.h5")
run(mpi_cmd(P, exe, "gen", "--kind", "clustered", "--clusters", "12", "--spread", "0.2", "--streams", "2",
            "--tokens", "6000", "--dim", "16", "--queries", "90", "--chunk", "512", "--seed", "10", "-o", other))
refused(["--resume", ck], "different trace", tr=other)
refused(["--resume", ck], "--methods", methods="exact,window:W=301")
shutil.copy(ck, path("trunc.ckpt"))
with open(path("trunc.ckpt"), "r+b") as f:
    f.truncate(os.path.getsize(ck) // 2)
refused(["--resume", path("trunc.ckpt")], "truncated or corrupt")
refused(["--resume", path("nope.ckpt")], "no such checkpoint")
checks += 5

# a real signal, to one rank only: every rank stops with status 3
big = path("big.h5")
run(mpi_cmd(P, exe, "gen", "--kind", "gaussian", "--streams", "2", "--tokens", "400000", "--dim", "32",
            "--queries", "4000", "--seed", "2", "-o", big), timeout=300)
ck = path("sig.ckpt")
cmd = mpi_cmd(P, exe, "replay", big, "--methods", "exact", "--batch", "16", "--checkpoint", ck, "-o", path("sig.h5"))
# once rank 0 has started the queries (every rank's handlers are up): no sleep
rc, se = signal_one_rank(cmd, "kvstream: ready: replaying", signal.SIGUSR1)
if rc != 3 or "stopped by signal 10" not in se or not os.path.exists(ck):
    fail("SIGUSR1: exit %d, stderr: %s" % (rc, se))
r = subprocess.run(cmd + ["--resume", ck, "--quiet"], capture_output=True, text=True, timeout=600, env=mpi_env())
if r.returncode:
    fail("resume after SIGUSR1 failed: " + r.stderr)
print("ok: SIGUSR1 to one rank stopped all with status 3; resumed")
checks += 1
print("check_checkpoint: %d passed, 0 failed" % checks)
