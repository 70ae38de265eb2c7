#!/usr/bin/python3
"""Replays over two emulated nodes on one machine.

usage: check_nodes.py KVSTREAM WORKDIR [--slurm]

A real two-node job has shared memory (btl vader) between the ranks of a
node and TCP between nodes.  Open MPI 4.1 takes a node to be what one orted
daemon serves, so mpirun is given two host names that are not this machine
(`-host 127.0.0.2:2,127.0.0.3:2`: no interface here has either address, so
both are other machines to it) and, as its ssh, tests/fake_rsh.sh, which
starts each node's orted here with its own vader and session directories.
Ranks 0,1 are then on node A (127.0.0.2) and 2,3 on node B (127.0.0.3).
With --slurm the two nodes are Slurm's instead: kvnode1 and kvnode2 of a
multiple-slurmd cluster on this machine (tests/slurm_nodes.sh starts it,
tests/slurm_cluster.sh), and the split runs are `salloc -N 2
--ntasks-per-node=2 mpiexec ...`, whose orteds Slurm starts by srun (the
cluster's TaskProlog sets the per-node directories).

The test checks, and fails on any deviation:
- the split happened: the job map puts ranks 0,1 on node A and 2,3 on
  node B, and Open MPI's own BTL choice (btl_base_verbose: "bml: Using X
  btl for send to RANK", every pair set up at MPI_Init) is vader for each
  of the 4 same-node ordered pairs and tcp for each of the 8 cross-node
  ones; with vader as the only BTL the same placement fails ("unable to
  reach each other"); a rank of node B has node B's own vader directory;
- the results file of the 2+2 replay (every method: exact, eviction,
  seeded sampling, sketches, topk's select merge, h2o's feedback, the
  quantised caches: every method of `kvstream methods --specs` with full
  semantics) is bitwise the plain 4-rank shared-memory run's
  (datasets and attributes, timings and RSS aside);
- kill -9 of a rank on node B mid-replay ends the whole job within 30 s with
  a non-zero status;
- every run finishes within its timeout and leaves no process behind (each
  mpirun gets a session of its own and a marker in its environment that
  orted and the ranks inherit, also under Slurm, where they descend from
  slurmd; afterwards no process of that session or with that marker may
  remain)."""
import os
import re
import signal
import subprocess
import sys
import time

from kvtest import Lines, fail, method_specs, methods_arg, mpi_env, ready_env, results_equal

if len(sys.argv) not in (3, 4) or sys.argv[3:] not in ([], ["--slurm"]):
    fail("usage: check_nodes.py KVSTREAM WORKDIR [--slurm]")
exe, work, slurm = sys.argv[1], sys.argv[2], sys.argv[3:] == ["--slurm"]
os.makedirs(work, exist_ok=True)
MPIEXEC = os.environ.get("KV_MPIEXEC", "mpiexec")
RSH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_rsh.sh")
# lo only, for the daemons' and the ranks' TCP: the test needs no network
# interface but loopback (Open MPI leaves lo out by default)
LO = ["--mca", "oob_tcp_if_include", "lo", "--mca", "pml", "ob1", "--mca", "btl_tcp_if_include", "lo"]
if slurm:
    if not os.environ.get("SLURM_CONF"):
        fail("--slurm: SLURM_CONF is not set (run tests/slurm_nodes.sh, which starts the cluster)")
    NODES = {"kvnode1": (0, 1), "kvnode2": (2, 3)}
    SPLIT_PRE = ["salloc", "--quiet", "-N", "2", "--ntasks-per-node=2", "--time=10"]
    SPLIT = LO + ["--bind-to", "none"]
else:
    # numeric names: no resolver is asked (a CI container's DNS may be
    # unreachable), and neither address is one of this machine's interfaces
    # (lo has 127.0.0.1 only), so Open MPI takes both for other machines
    NODES = {"127.0.0.2": (0, 1), "127.0.0.3": (2, 3)}
    SPLIT_PRE = []
    SPLIT = LO + ["--mca", "plm_rsh_agent", RSH, "--map-by", "slot", "--bind-to", "none",
                  "-host", ",".join("%s:%d" % (n, len(r)) for n, r in NODES.items())]
SHM = ["--mca", "pml", "ob1", "--mca", "btl", "vader,self"]
MARK = "KV_CHECK_NODES=%d.%d" % (os.getpid(), time.time_ns())
METHODS = methods_arg(method_specs(exe, semantics="full"))
checks = 0


def path(name):
    return os.path.join(work, name)


def env():
    e = mpi_env()
    e["KV_NODES_DIR"] = path("nodes")
    k, v = MARK.split("=")
    e[k] = v
    return e


def environ(p):
    with open("/proc/%d/environ" % p, "rb") as f:
        return f.read().split(b"\0")


def ours(p, sid):
    """Is pid p of this script's run with session sid: in the session, or a
    kvstream rank or orted with MARK in its environment (only theirs is
    read; under Slurm they descend from slurmd, not from us)?"""
    if os.getsid(p) == sid:
        return True
    with open("/proc/%d/cmdline" % p, "rb") as f:
        prog = f.read().split(b"\0")[0]
    if prog != exe.encode() and os.path.basename(prog) != b"orted":
        return False
    return MARK.encode() in environ(p)


def our_procs(sid):
    """Pids of the live processes of this script's run with session sid."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                if ours(int(p), sid):
                    out.append(int(p))
            except OSError:
                pass  # gone meanwhile, or a zombie
    return out


def kill_all(proc):
    for p in our_procs(proc.pid):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def reap(proc, what):
    """mpirun has ended: nothing it started may outlive it (give orted and
    the ranks 10 s to finish exiting), else kill them and fail."""
    t0 = time.time()
    while our_procs(proc.pid) and time.time() - t0 < 10:
        time.sleep(0.2)
    left = our_procs(proc.pid)
    if left:
        cmds = []
        for p in left:
            try:
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    cmds.append(f.read().replace(b"\0", b" ").decode(errors="replace")[:80])
            except OSError:
                pass
        kill_all(proc)
        fail("%s: %d processes left behind after mpirun ended: %s" % (what, len(left), "; ".join(cmds)))


def start(args, ready=False):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ready_env(env()) if ready else env(), start_new_session=True)


# Each run's timeout (seconds; a normal run takes 1-10 s, under ASan too):
# together with the kill -9 part's bounds they stay below ctest's 600 s, so
# a hang is reported by this script, which kills what it started.
def run(args, what, timeout):
    proc = start(args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_all(proc)
        proc.communicate()
        fail("%s: timed out after %d s (hang?): %s" % (what, timeout, " ".join(args)))
    reap(proc, what)
    return proc.returncode, out, err


def mpirun(opts, np_, *args):
    return [MPIEXEC, "--oversubscribe"] + opts + ["-n", str(np_), exe] + list(args)


def split(opts, *args):
    """A 4-rank run over the two nodes."""
    return SPLIT_PRE + mpirun(SPLIT + opts, 4, *args)


def check_map(text):
    """--display-map (printed once by mpirun and once per orted): every copy
    must put exactly the ranks of NODES on each node."""
    seen, node = {}, None
    for line in text.splitlines():
        m = re.search(r"Data for node: (\S+)", line)
        if m:
            node = m.group(1)
            continue
        m = re.search(r"Process rank: (\d+)", line)
        if m and node is not None:
            seen.setdefault(node, set()).add(int(m.group(1)))
            if int(m.group(1)) not in NODES.get(node, ()):
                fail("job map puts rank %s on node %s; want %s" % (m.group(1), node, NODES))
    if {k: sorted(v) for k, v in seen.items()} != {k: list(v) for k, v in NODES.items()}:
        fail("job map: %s; want %s" % (seen, NODES))


def check_btls(text):
    """btl_base_verbose 100: each rank logs, per peer, the BTL it sends with
    (`[host:pid] mca: bml: Using vader btl for send to [[job,1],R] on node
    N`); the self entry tells which rank the pid is."""
    by_pid = {}
    for m in re.finditer(r"\[[^:\]]+:(\d+)\] mca: bml: Using (\w+) btl for send to \[\[\d+,\d+\],(\d+)\]", text):
        by_pid.setdefault(m.group(1), {})[int(m.group(3))] = m.group(2)
    node_of = {r: n for n, rs in NODES.items() for r in rs}
    pairs = {}
    for peers in by_pid.values():
        me = [r for r, b in peers.items() if b == "self"]
        if len(me) != 1:
            fail("bml log of a rank without exactly one self entry: %s" % peers)
        for r, b in peers.items():
            if r != me[0]:
                pairs[(me[0], r)] = b
    want = {(a, b): ("vader" if node_of[a] == node_of[b] else "tcp") for a in node_of for b in node_of if a != b}
    if pairs != want:
        fail("BTL per (sender, receiver): %s; want %s" % (sorted(pairs.items()), sorted(want.items())))
    return sum(1 for b in want.values() if b == "vader"), sum(1 for b in want.values() if b == "tcp")


trace = path("tr.h5")
rc, out, err = run(mpirun(SHM, 2, "gen", "--kind", "clustered", "--clusters", "12", "--spread", "0.2", "--streams",
                          "2", "--tokens", "6000", "--dim", "16", "--queries", "90", "--chunk", "512", "--seed", "9",
                          "-o", trace), "gen", 60)
if rc:
    fail("gen: " + err)

# the 2+2 replay, with the map and each rank's BTL choice logged
replay = ["replay", trace, "--methods", METHODS, "--batch", "10", "--save-outputs", "--quiet", "--seed", "4"]
split_out, shm_out = path("split.h5"), path("shm.h5")
# (mpi_add_procs_cutoff: connect every pair at MPI_Init, so all 12 are logged,
# not only those the replay's collectives happen to use)
rc, out, err = run(split(["--mca", "btl", "vader,tcp,self", "--display-map", "--mca", "btl_base_verbose", "100",
                          "--mca", "mpi_add_procs_cutoff", "64"], *replay, "-o", split_out), "2+2 replay", 150)
if rc:
    fail("2+2 replay over two emulated nodes failed (exit %d): %s" % (rc, err[-3000:]))
check_map(out + err)
nv, nt = check_btls(out + err)
A, B = NODES
print("ok: 2+2 replay: map puts ranks 0,1 on node A (%s) and 2,3 on node B (%s); %d same-node pairs use vader, "
      "%d cross-node pairs tcp" % (A, B, nv, nt))
checks += 1

rc, out, err = run(mpirun(SHM, 4, *replay, "-o", shm_out), "4-rank shared-memory replay", 120)
if rc:
    fail("4-rank shared-memory replay failed (exit %d): %s" % (rc, err[-3000:]))
n = results_equal(shm_out, split_out, "4 ranks on one node vs 2+2 on two emulated nodes")
print("ok: 2+2 over two emulated nodes and 4 ranks over shared memory bitwise equal (%d datasets)" % n)
checks += 1

# vader cannot cross nodes: with it alone the same placement cannot connect
rc, out, err = run(split(["--mca", "btl", "vader,self"], *replay, "-o", path("vader-only.h5")),
                   "2+2 replay with vader only", 60)
if rc == 0:
    fail("2+2 replay with btl vader,self succeeded: the two emulated nodes are one node to Open MPI")
if "unable to reach each other" not in out + err:
    fail("2+2 replay with btl vader,self failed (exit %d) but not for unreachable peers: %s" % (rc, err[-2000:]))
print("ok: 2+2 with vader as the only BTL fails: ranks on nodes A and B cannot reach each other (exit %d)" % rc)
checks += 1

# kill -9 of rank 2 (on node B) mid-replay: the whole job ends
big = path("big.h5")
rc, out, err = run(mpirun(SHM, 2, "gen", "--kind", "gaussian", "--streams", "2", "--tokens", "150000", "--dim", "32",
                          "--queries", "2000", "--seed", "2", "-o", big), "gen big", 60)
if rc:
    fail("gen: " + err)
proc = start(split(["--mca", "btl", "vader,tcp,self"], "replay", big, "--methods", "exact,h2o:tokens=2000",
                   "--batch", "16", "--quiet", "-o", path("killed.h5")), ready=True)
job = Lines(proc)


def rank_pid(rank):
    """The pid of rank `rank` (its OMPI_COMM_WORLD_RANK) of this run."""
    for p in our_procs(proc.pid):
        try:
            with open("/proc/%d/cmdline" % p, "rb") as f:
                if not f.read().startswith(exe.encode() + b"\0"):
                    continue
            if b"OMPI_COMM_WORLD_RANK=%d" % rank in environ(p):
                return p
        except OSError:
            pass
    return None


# the ranks are in their batches and collectives once rank 0 says so (no sleep)
if not job.wait("kvstream: ready: replaying", timeout=60):
    kill_all(proc)
    fail("kill -9: the replay did not say it started: %s" % "".join(filter(None, job.err))[-2000:])
victim, t0 = None, time.time()
while victim is None and time.time() - t0 < 30 and proc.poll() is None:
    time.sleep(0.3)
    victim = rank_pid(2)
if victim is None:
    kill_all(proc)
    fail("kill -9: rank 2 was not found (mpirun exit %s)" % proc.returncode)
# node B's ranks have node B's own vader directory (fake_rsh.sh, or the
# cluster's TaskProlog under Slurm), not one shared with node A
vdir = [v for v in environ(victim) if v.startswith(b"OMPI_MCA_btl_vader_backing_directory=")]
if len(vdir) != 1 or not vdir[0].endswith(b"/%s/shm" % B.encode()):
    kill_all(proc)
    fail("rank 2's vader backing directory is %s, not node %s's own" % (vdir, B))
if proc.poll() is not None:
    fail("kill -9: the replay ended before the kill; make the trace bigger")
os.kill(victim, signal.SIGKILL)
t_kill = time.time()
try:
    job.communicate(timeout=30)
except subprocess.TimeoutExpired:
    kill_all(proc)
    job.communicate(timeout=60)
    fail("kill -9: job still running 30 s after kill -9 of rank 2 on node B (hang)")
if proc.returncode == 0:
    fail("kill -9: exit 0 although rank 2 was killed")
reap(proc, "kill -9 of rank 2")
print("ok: rank 2 uses node B's own vader directory; kill -9 of it ended the 2+2 job in %.1f s (exit %d), nothing left behind"
      % (time.time() - t_kill, proc.returncode))
checks += 1
print("check_nodes: %d passed, 0 failed" % checks)
