#!/usr/bin/python3
"""Transport independence.

usage: check_transport.py KVSTREAM WORKDIR

Open MPI moves bytes between ranks on one node through shared memory (btl
vader) and between nodes through TCP (or a fabric).  Everything else in the
test suite runs over shared memory only, so here the same replays run with
`--mca pml ob1 --mca btl vader,self` and with `--mca btl tcp,self` (every
pair of ranks over TCP on the loopback interface: the inter-node code path,
as if each rank were on a node of its own) at 2 and 4 ranks, and:
- every dataset of the results file (outputs, rel_error, bound_ratio) and
  every attribute but the timings and RSS are bitwise equal across the two
  transports, for every method of the registry with full semantics
  (`kvstream methods --specs`: h2o's feedback collectives, topk's select
  merge, the seeded samplers and sketches among them);
- kill -9 of one rank during a replay ends the whole job, over either
  transport, within 30 s and with a non-zero status (it must never hang)."""
import os
import signal
import subprocess
import sys
import time

from kvtest import Lines, fail, method_specs, methods_arg, mpi_env, ready_env, results_equal

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
MPIEXEC = os.environ.get("KV_MPIEXEC", "mpiexec")
TRANSPORTS = {
    "shm": ["--mca", "pml", "ob1", "--mca", "btl", "vader,self"],
    # btl_tcp_if_include lo: Open MPI leaves loopback out by default; with it
    # the test needs no network interface besides lo
    "tcp": ["--mca", "pml", "ob1", "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo"],
}
METHODS = methods_arg(method_specs(exe, semantics="full"))
checks = 0


def path(name):
    return os.path.join(work, name)


def cmd(transport, np_, *args):
    return [MPIEXEC, "--oversubscribe"] + TRANSPORTS[transport] + ["-n", str(np_), exe] + list(args)


def run(c, timeout=300):
    try:
        return subprocess.run(c, capture_output=True, text=True, timeout=timeout, env=mpi_env())
    except subprocess.TimeoutExpired:
        fail("timed out after %ds (hang?): %s" % (timeout, " ".join(c)))


trace = path("tr.h5")
r = run(cmd("shm", 2, "gen", "--kind", "clustered", "--clusters", "12", "--spread", "0.2", "--streams", "2",
            "--tokens", "6000", "--dim", "16", "--queries", "90", "--chunk", "512", "--seed", "9", "-o", trace))
if r.returncode:
    fail("gen: " + r.stderr)

for np_ in (2, 4):
    outs = {}
    for t in TRANSPORTS:
        outs[t] = path("%s-np%d.h5" % (t, np_))
        r = run(cmd(t, np_, "replay", trace, "--methods", METHODS, "--batch", "10", "--save-outputs", "--quiet",
                    "--seed", "4", "-o", outs[t]))
        if r.returncode:
            fail("replay over %s at %d ranks failed: %s" % (t, np_, r.stderr))
    n = results_equal(outs["shm"], outs["tcp"], "%d ranks, shared memory vs TCP" % np_)
    print("ok: %d ranks: shared memory and TCP runs bitwise equal (%d datasets)" % (np_, n))
    checks += 1

# kill -9 of one rank: the job ends (Open MPI's daemon sees the death and
# aborts the others), over either transport
big = path("big.h5")
r = run(cmd("shm", 2, "gen", "--kind", "gaussian", "--streams", "2", "--tokens", "300000", "--dim", "32",
            "--queries", "3000", "--seed", "2", "-o", big))
if r.returncode:
    fail("gen: " + r.stderr)
for t in TRANSPORTS:
    c = cmd(t, 3, "replay", big, "--methods", "exact,h2o:tokens=2000", "--batch", "16", "--quiet",
            "-o", path("killed-%s.h5" % t))
    proc = subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ready_env())
    job = Lines(proc)
    # the ranks are in their batches and collectives once rank 0 says so (no sleep)
    if not job.wait("kvstream: ready: replaying") or len(job.pids()) != 3:
        proc.kill()
        fail("%s: the 3-rank replay did not say it started (exit %s): %s"
             % (t, proc.poll(), "".join(filter(None, job.err))))
    pids = sorted(job.pids())
    if proc.poll() is not None:
        fail("%s: the replay ended before the kill; make the trace bigger" % t)
    os.kill(pids[1], signal.SIGKILL)
    t_kill = time.time()
    try:
        job.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        job.communicate(timeout=60)
        fail("%s: job still running 30 s after kill -9 of one rank (hang)" % t)
    if proc.returncode == 0:
        fail("%s: exit 0 although a rank was killed" % t)
    print("ok: %s: kill -9 of one rank ended the job in %.1f s (exit %d)" % (t, time.time() - t_kill, proc.returncode))
    checks += 1
print("check_transport: %d passed, 0 failed" % checks)
