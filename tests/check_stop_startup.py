#!/usr/bin/python3
"""Stops that arrive during start-up.

usage: check_stop_startup.py KVSTREAM WORKDIR

kvstream installs its SIGTERM/SIGUSR1 handlers before MPI_Init (main.c), so
a stop that reaches a rank while MPI, the trace checks or a resume are
still starting is recorded, never fatal, and honoured once every rank is up.
- A signal sent before main() even runs (the process starts with SIGUSR1
  or SIGTERM blocked, so it stays pending; kvstream unblocks it with its
  handler in place): replay, gen and a --resume all exit 3 "during
  start-up"; nothing ran, so no checkpoint or trace is written and the
  resumed checkpoint is byte for byte unchanged; resuming it afterwards
  gives the uninterrupted run's results bitwise.
- 3 ranks under mpirun: SIGUSR1 to one rank as soon as every rank says its
  handlers are in place (KVSTREAM_READY=1, before MPI_Init): all ranks exit
  3 (none dies of the signal), during start-up or, if start-up was already
  over, with a checkpoint that resumes.  No sleep anywhere: the signal goes
  after a line kvstream printed, and either outcome is checked."""
import hashlib
import os
import signal
import subprocess
import sys

from kvtest import fail, mpi_cmd, mpi_env, results_equal, run, signal_one_rank

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
checks = 0


def path(name):
    return os.path.join(work, name)


def digest(p):
    with open(p, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def signalled_before_main(sig, *args):
    """Run `kvstream args` as a 1-rank job (no mpirun) with `sig` pending
    from before exec; returns (exit status, stderr)."""
    proc = subprocess.Popen([exe] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(), preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {sig}))
    os.kill(proc.pid, sig)  # Popen returns after the exec: the signal waits, blocked, for main()
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        fail("%s: no exit within 120 s of a start-up signal (hang?)" % " ".join(args))
    return proc.returncode, err


trace = path("t.h5")
r = run([exe, "gen", "--kind", "clustered", "--clusters", "6", "--streams", "2", "--tokens", "6000", "--dim", "16",
         "--queries", "80", "--chunk", "512", "--seed", "3", "-o", trace], timeout=120)
if r.returncode:
    fail("gen: " + r.stderr)
METHODS = "exact,window:W=200,h2o:tokens=300"
ref = path("ref.h5")
r = run([exe, "replay", trace, "--methods", METHODS, "--batch", "8", "--save-outputs", "--quiet", "-o", ref],
        timeout=300)
if r.returncode:
    fail("uninterrupted replay: " + r.stderr)

# replay: exit 3 at start-up, no checkpoint
ck = path("c.ckpt")
for p in (ck, path("early.h5")):
    if os.path.exists(p):
        os.remove(p)
rc, err = signalled_before_main(signal.SIGUSR1, "replay", trace, "--methods", METHODS, "--batch", "8", "--quiet",
                                "--checkpoint", ck, "-o", path("early.h5"))
if rc != 3 or "stopped by signal 10 during start-up" not in err or os.path.exists(ck):
    fail("replay signalled before main: exit %d, checkpoint %s, stderr: %s" % (rc, os.path.exists(ck), err))
print("ok: replay with SIGUSR1 pending from before main: exit 3 during start-up, no checkpoint")
checks += 1

# gen (a command that does not poll for stops): the same at start-up
g = path("gen-early.h5")
if os.path.exists(g):
    os.remove(g)
rc, err = signalled_before_main(signal.SIGTERM, "gen", "--tokens", "100", "--dim", "4", "--queries", "4", "-o", g)
if rc != 3 or "stopped by signal 15 during start-up" not in err or os.path.exists(g):
    fail("gen signalled before main: exit %d, wrote %s: %s" % (rc, os.path.exists(g), err))
print("ok: gen with SIGTERM pending from before main: exit 3 during start-up, no trace written")
checks += 1

# --resume: the checkpoint is left as it was, and resumes later
out = path("res.h5")
base = ["replay", trace, "--methods", METHODS, "--batch", "8", "--save-outputs", "--quiet", "--checkpoint", ck,
        "-o", out]
r = run([exe] + base + ["--stop-after", "40"], timeout=300)
if r.returncode != 3 or not os.path.exists(ck):
    fail("--stop-after 40: exit %d: %s" % (r.returncode, r.stderr))
before = digest(ck)
rc, err = signalled_before_main(signal.SIGUSR1, *(base + ["--resume", ck]))
if rc != 3 or "during start-up" not in err or digest(ck) != before:
    fail("resume signalled before main: exit %d, checkpoint changed %s: %s" % (rc, digest(ck) != before, err))
r = run([exe] + base + ["--resume", ck], timeout=300)
if r.returncode:
    fail("resume after the start-up stop: " + r.stderr)
n = results_equal(ref, out, "stopped, stopped again at start-up, resumed")
print("ok: --resume stopped at start-up leaves the checkpoint unchanged; resumed later: bitwise (%d datasets)" % n)
checks += 1

# 3 ranks: SIGUSR1 to one of them as soon as all have their handlers
big = path("big.h5")
r = run(mpi_cmd(2, exe, "gen", "--kind", "gaussian", "--streams", "2", "--tokens", "100000", "--dim", "32",
                "--queries", "1000", "--seed", "2", "-o", big), timeout=300)
if r.returncode:
    fail("gen big: " + r.stderr)
ck3, out3 = path("np3.ckpt"), path("np3.h5")
if os.path.exists(ck3):
    os.remove(ck3)
cmd = mpi_cmd(3, exe, "replay", big, "--methods", "exact", "--batch", "16", "--quiet", "--checkpoint", ck3,
              "-o", out3)
rc, err = signal_one_rank(cmd, "kvstream: ready: pid", signal.SIGUSR1, count=3)
if rc != 3 or "stopped by signal 10" not in err:
    fail("3 ranks, SIGUSR1 to one rank at start-up: exit %d (a rank killed by the signal?): %s" % (rc, err))
if "during start-up" in err:
    if os.path.exists(ck3):
        fail("3 ranks: stopped during start-up but a checkpoint was written")
    where = "during start-up, no checkpoint"
else:
    r = run(cmd + ["--resume", ck3], timeout=600)
    if r.returncode:
        fail("3 ranks: resume after the stop: " + r.stderr)
    where = "after start-up, with a checkpoint that resumed"
print("ok: 3 ranks, SIGUSR1 to one rank once its handlers were in place: all exit 3 (%s)" % where)
checks += 1
print("check_stop_startup: %d passed, 0 failed" % checks)
