#!/usr/bin/python3
"""Stops inside a batch.

usage: check_stop_fast.py KVSTREAM WORKDIR NP

The whole trace is ONE batch (--batch = m), long enough (about 15-30 s on
2 cores) that waiting for its end would outlast Slurm's KillWait.
- SIGUSR1 to mpirun (which forwards it to the ranks), sent once rank 0 says
  the queries have started (KVSTREAM_READY=1), stops the job with exit
  status 3 inside the batch (the message says so, and the checkpoint's
  next_query is 0 with the walk saved in it), not at its end; the latency
  is printed (seconds on a quiet machine), not asserted;
- the resumed run's results are bitwise those of an uninterrupted run:
  outputs, rel_error, bound_ratio and every memory figure, for exact
  (answered batch-wide after the walk), h2o (feedback collectives during the
  walk) and subgen (seeded sampling);
- --stop-after q stops at the first query position boundary at or after q
  inside a batch (twice in the same batch, then resumed): again bitwise."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np

from kvtest import Lines, fail, mpi_cmd, ready_env, run

exe, work, P = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(work, exist_ok=True)
METHODS = "exact,h2o:tokens=4000,subgen:delta=0.5,t=16,s=1024,subgen:delta=1,t=16,s=256,seed=7"
M_QUERIES = 2000
checks = 0


def path(name):
    return os.path.join(work, name)


def same(a, b, what):
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        for g in x["methods"]:
            for d in x["methods"][g]:
                if isinstance(x["methods"][g][d], h5py.Group):  # per_stream: derived from rel_error, compared there
                    continue
                if not np.array_equal(x["methods"][g][d][...], y["methods"][g][d][...]):
                    fail("%s: /methods/%s/%s differs from the uninterrupted run" % (what, g, d))
            for a_ in ("memory_bytes", "peak_memory_bytes", "final_memory_bytes", "peak_rank_bytes", "clusters",
                       "kept_tokens"):
                if x["methods"][g].attrs[a_] != y["methods"][g].attrs[a_]:
                    fail("%s: %s of %s differs: %s vs %s" % (what, a_, g, x["methods"][g].attrs[a_],
                                                             y["methods"][g].attrs[a_]))


trace = path("long.h5")
r = run(mpi_cmd(P, exe, "gen", "--kind", "gaussian", "--streams", "1", "--tokens", "250000", "--dim", "32",
                "--queries", str(M_QUERIES), "--seed", "2", "-o", trace), timeout=300)
if r.returncode:
    fail("gen: " + r.stderr)


def replay_cmd(out, *extra):
    return mpi_cmd(P, exe, "replay", trace, "--methods", METHODS, "--batch", str(M_QUERIES), "--save-outputs",
                   "--quiet", "--seed", "4", "-o", out, *extra)


ref = path("ref.h5")
t0 = time.time()
r = run(replay_cmd(ref), timeout=600)
t_ref = time.time() - t0
if r.returncode:
    fail("uninterrupted replay failed: " + r.stderr)
print("uninterrupted single-batch replay: %.1f s" % t_ref)

# SIGUSR1 to mpirun during the one batch: as soon as rank 0 says the
# queries have started (KVSTREAM_READY=1), not after a guessed sleep
ck, out = path("sig.ckpt"), path("sig.h5")
proc = subprocess.Popen(replay_cmd(out, "--checkpoint", ck), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True, env=ready_env())
job = Lines(proc)
t0 = time.time()
if not job.wait("kvstream: ready: replaying"):
    proc.kill()
    fail("the replay did not say it started: %s" % "".join(filter(None, job.err)))
proc.send_signal(signal.SIGUSR1)
t_sig = time.time()
try:
    so, se = job.communicate(timeout=300)
except subprocess.TimeoutExpired:
    proc.kill()
    fail("the replay did not stop within 300 s of SIGUSR1 to mpirun (hang?)")
latency = time.time() - t_sig
# the stop is fast because it is inside the batch (not after its end): the
# message and the checkpoint say so; the seconds are reported, not asserted
if proc.returncode != 3 or "stopped by signal 10" not in se or "(inside a batch)" not in se:
    fail("SIGUSR1 to mpirun: exit %d, stderr: %s" % (proc.returncode, se))
with h5py.File(ck, "r") as f:
    if int(f.attrs["next_query"]) != 0:
        fail("checkpoint next_query %d, expected 0 (the walk inside the only batch)" % f.attrs["next_query"])
print("ok: SIGUSR1 to mpirun %.1f s after start, in a single %.1f s batch: exit 3 after %.1f s, inside the batch"
      % (t_sig - t0, t_ref, latency))
checks += 1
r = run(replay_cmd(out, "--checkpoint", ck, "--resume", ck), timeout=600)
if r.returncode:
    fail("resume after SIGUSR1 failed: " + r.stderr)
same(ref, out, "stopped by SIGUSR1 inside the batch and resumed")
print("ok: resumed from inside the batch: bitwise identical")
checks += 1

# deterministic stops inside the batch: at two query positions, then to the end
ck, out = path("at.ckpt"), path("at.h5")
for i, q in enumerate((300, 1234)):
    extra = ("--checkpoint", ck, "--stop-after", str(q)) + (("--resume", ck) if i else ())
    r = run(replay_cmd(out, *extra), timeout=600)
    want = "after %d of %d queries (inside a batch)" % (q, M_QUERIES)
    if r.returncode != 3 or want not in r.stderr:
        fail("--stop-after %d: exit %d, expected %r in: %s" % (q, r.returncode, want, r.stderr))
r = run(replay_cmd(out, "--checkpoint", ck, "--resume", ck), timeout=600)
if r.returncode:
    fail("resume after --stop-after failed: " + r.stderr)
same(ref, out, "stopped at queries 300 and 1234 inside one batch")
print("ok: --stop-after 300 then 1234 inside one batch, resumed: bitwise identical")
checks += 1

# a checkpoint inside a batch holds only what the walk answered: exact and
# topk answer after the walk (partial_batch, select), so their partial
# states for the batch's 2,000 queries (2 x 2000 x (dv + 2) doubles, 1.1 MB
# per rank) are not in it; what remains is rank 0's metrics of the run (rel,
# bound, reads: 3 x M x m doubles), the walk's indices and small per-stage
# fields (--no-bound-ratio: no V^T V snapshots staged for the walked queries)
ck2, out2 = path("small.ckpt"), path("small.h5")
M2, dv = 2, 32
r = run(mpi_cmd(P, exe, "replay", trace, "--methods", "exact,topk:k=64", "--batch", str(M_QUERIES), "--quiet", "--no-bound-ratio",
                "-o", out2, "--checkpoint", ck2, "--stop-after", "300"), timeout=600)
if r.returncode != 3:
    fail("exact,topk --stop-after 300: exit %d: %s" % (r.returncode, r.stderr))
with h5py.File(ck2, "r") as f:
    size = f["state"].shape[0]
bound = 4 * M2 * M_QUERIES * 8 + P * 65536
walk = P * M2 * M_QUERIES * (dv + 2) * 8
if size > bound:
    fail("checkpoint inside a batch of exact and topk: %d bytes, more than %d (the batch's partial states, %d "
         "bytes, must not be in it)" % (size, bound, walk))
print("ok: checkpoint inside a 2,000-query batch of exact and topk: %d bytes (<= %d; the batch's partial states "
      "would add %d)" % (size, bound, walk))
checks += 1
print("check_stop_fast: %d passed, 0 failed" % checks)
