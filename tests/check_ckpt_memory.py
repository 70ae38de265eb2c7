#!/usr/bin/python3
"""Writing and resuming a checkpoint costs a bounded piece of memory, not a copy of the state.

usage: check_ckpt_memory.py KVSTREAM WORKDIR

A 2-rank replay of one stream of 262,144 tokens (d = dv = 128, 256 MiB of
keys and values) with --reference none and uniform:tokens=131072: each rank
holds about 64 MiB of samples (peak_rank_bytes says exactly), a state that
is saved whole (not rebuilt from the trace).  peak_rss_bytes (the largest
rank's getrusage high-water mark) of
  A. the replay without a checkpoint,
  B. the same with --checkpoint-every 6 (one checkpoint, at 6 of 8 queries,
     when the sample is full; --batch 2 puts a batch end there), default
     4 MiB pieces,
  C. the resume of B's checkpoint, run to the end,
  D. B with KVSTREAM_CKPT_PIECE=1GiB (one piece: the whole state in memory,
     as checkpoints were written before),
must satisfy: B - A and C - A <= 4 MiB (the piece) + 24 MiB (slack: HDF5's
file and metadata caches and MPI-IO buffers of creating and opening the
checkpoint; allocator pages), while D - A >= 3/4 of the rank's state: the
measurement sees a copy of the state when there is one, and the bound is
below half of one (the state must be >= 2 x 28 MiB).  C's results equal
A's bitwise (outputs, memory).  Measured: +4.5 MiB written, +0.0 resumed,
+66.4 MiB in one piece, for a 66.4 MiB rank state."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, mpi_env

import subprocess

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
MiB = 1 << 20
PIECE, SLACK = 4 * MiB, 24 * MiB
trace = os.path.join(work, "big.h5")
METHODS = "uniform:tokens=131072"


def run(cmd, piece=None, timeout=300):
    env = mpi_env()
    if piece is not None:
        env["KVSTREAM_CKPT_PIECE"] = str(piece)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        fail("timed out (hang?): " + " ".join(cmd))


r = run(mpi_cmd(2, exe, "gen", "--kind", "gaussian", "--streams", "1", "--tokens", "262144", "--dim", "128",
                "--queries", "8", "--chunk", "8192", "--seed", "3", "-o", trace))
if r.returncode:
    fail("gen failed: " + r.stderr)


def replay(name, *extra, piece=None, code=0):
    out = os.path.join(work, name + ".h5")
    r = run(mpi_cmd(2, exe, "replay", trace, "--methods", METHODS, "--reference", "none", "--batch", "2", "--quiet",
                    "--save-outputs", "--seed", "5", "-o", out, *extra), piece=piece)
    if r.returncode != code:
        fail("%s: exit %d: %s" % (name, r.returncode, r.stderr))
    with h5py.File(out, "r") as f:
        g = f["methods"][METHODS]
        return (int(f.attrs["peak_rss_bytes"]), int(g.attrs["peak_rank_bytes"]), g["outputs"][...],
                int(g.attrs["memory_bytes"]))


ck = os.path.join(work, "run.ckpt")
rss_a, state, out_a, mem_a = replay("a")
rss_b, _, _, _ = replay("b", "--checkpoint", ck, "--checkpoint-every", "6")
with h5py.File(ck, "r") as f:
    if int(f.attrs["next_query"]) != 6:
        fail("the checkpoint is at %d queries, expected 6" % f.attrs["next_query"])
    ck_bytes = int(f["state"].shape[0])
rss_c, _, out_c, mem_c = replay("b", "--resume", ck)
rss_d, _, _, _ = replay("d", "--checkpoint", os.path.join(work, "one.ckpt"), "--checkpoint-every", "6",
                        piece=1 << 30)
print("rank state %.1f MiB (checkpoint /state %.1f MiB); peak RSS: plain %.1f MiB, checkpoint written %.1f MiB "
      "(+%.1f), resumed %.1f MiB (+%.1f), written in one piece %.1f MiB (+%.1f); bound +%.1f MiB" %
      (state / MiB, ck_bytes / MiB, rss_a / MiB, rss_b / MiB, (rss_b - rss_a) / MiB, rss_c / MiB,
       (rss_c - rss_a) / MiB, rss_d / MiB, (rss_d - rss_a) / MiB, (PIECE + SLACK) / MiB))
if state < 2 * (PIECE + SLACK):
    fail("the rank's state (%d bytes) is too small for the test to tell a copy from a piece" % state)
if rss_b - rss_a > PIECE + SLACK:
    fail("writing the checkpoint grew peak RSS by %d bytes, more than the piece + slack %d" % (rss_b - rss_a,
                                                                                             PIECE + SLACK))
if rss_c - rss_a > PIECE + SLACK:
    fail("resuming grew peak RSS by %d bytes, more than the piece + slack %d" % (rss_c - rss_a, PIECE + SLACK))
if rss_d - rss_a < 0.75 * state:
    fail("one whole piece grew peak RSS by only %d bytes for a %d-byte state: RSS does not see the copy"
         % (rss_d - rss_a, state))
if not np.array_equal(out_a, out_c) or mem_a != mem_c:
    fail("the resumed run's outputs or memory differ from the uninterrupted one")
print("check_ckpt_memory: 4 passed, 0 failed")
