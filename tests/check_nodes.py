#!/usr/bin/python3
"""Replays over two emulated nodes on one machine (issue 16, item 5).

usage: check_nodes.py KVSTREAM WORKDIR

A real two-node job has shared memory (btl vader) between the ranks of a
node and TCP between nodes.  Open MPI 4.1 takes a node to be what one orted
daemon serves, so mpirun is given two host names that are not this machine
(`-host 127.0.0.2:2,127.0.0.3:2`: no interface here has either address, so
both are other machines to it) and, as its ssh, tests/fake_rsh.sh, which
starts each node's orted here with its own vader and session directories.
Ranks 0,1 are then on node A (127.0.0.2) and 2,3 on node B (127.0.0.3).  The test checks, and fails on any deviation:
- the split happened: the job map puts ranks 0,1 on node A and 2,3 on
  node B, and Open MPI's own BTL choice (btl_base_verbose: "bml: Using X btl
  for send to RANK", every pair set up at MPI_Init) is vader for each of
  the 4 same-node ordered pairs and tcp for each of the 8 cross-node ones; with vader as the only BTL the
  same placement fails ("unable to reach each other");
- the results file of the 2+2 replay (every method: exact, eviction,
  seeded sampling, sketches, topk's select merge, h2o's feedback, the
  quantised caches) is bitwise the plain 4-rank shared-memory run's
  (datasets and attributes, timings and RSS aside);
- kill -9 of a rank on node B mid-replay ends the whole job within 30 s with
  a non-zero status;
- every run finishes within its timeout and leaves no process behind (each
  mpirun gets a session of its own; afterwards no process of that session
  may remain, orteds included)."""
import os
import re
import signal
import subprocess
import sys
import time

from kvtest import fail, mpi_env, results_equal

exe, work = sys.argv[1], sys.argv[2]
os.makedirs(work, exist_ok=True)
MPIEXEC = os.environ.get("KV_MPIEXEC", "mpiexec")
RSH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_rsh.sh")
# numeric names: no resolver is asked (a CI container's DNS may be
# unreachable), and neither address is one of this machine's interfaces
# (lo has 127.0.0.1 only), so Open MPI takes both for other machines
NODES = {"127.0.0.2": (0, 1), "127.0.0.3": (2, 3)}
# lo only, for the daemons' and the ranks' TCP: the test needs no network
# interface but loopback (Open MPI leaves lo out by default)
SPLIT = ["--mca", "plm_rsh_agent", RSH, "--mca", "oob_tcp_if_include", "lo",
         "-host", ",".join("%s:%d" % (n, len(r)) for n, r in NODES.items()), "--map-by", "slot", "--bind-to", "none",
         "--mca", "pml", "ob1", "--mca", "btl_tcp_if_include", "lo"]
SHM = ["--mca", "pml", "ob1", "--mca", "btl", "vader,self"]
METHODS = ("exact,window:W=300,sinks:S=8,W=200,h2o:tokens=400,tova:tokens=400,snapkv:tokens=400,"
           "uniform:tokens=400,topk:k=64,balancekv:tokens=400,subgen:delta=1.5,t=8,s=64,"
           "kivi:bits=4,kivi:bits=2,name=kivi2,qjl")
checks = 0


def path(name):
    return os.path.join(work, name)


def env():
    e = mpi_env()
    e["KV_NODES_DIR"] = path("nodes")
    return e


def session_procs(sid):
    """Pids of the live processes of session sid (a zombie has no session)."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.getsid(int(p)) == sid:
                    out.append(int(p))
            except OSError:
                pass  # gone meanwhile
    return out


def reap(proc, what):
    """mpirun has ended: nothing it started may outlive it (give orted and
    the ranks 10 s to finish exiting), else kill them and fail."""
    t0 = time.time()
    while session_procs(proc.pid) and time.time() - t0 < 10:
        time.sleep(0.2)
    left = session_procs(proc.pid)
    if left:
        cmds = []
        for p in left:
            try:
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    cmds.append(f.read().replace(b"\0", b" ").decode(errors="replace")[:80])
            except OSError:
                pass
        os.killpg(proc.pid, signal.SIGKILL)
        fail("%s: %d processes left behind after mpirun ended: %s" % (what, len(left), "; ".join(cmds)))


def start(args):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            start_new_session=True)


# Each run's timeout (seconds; a normal run takes 1-10 s, under ASan too):
# together with the kill -9 part's bounds they stay below ctest's 600 s, so
# a hang is reported by this script, which kills what it started.
def run(args, what, timeout):
    proc = start(args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        fail("%s: timed out after %d s (hang?): %s" % (what, timeout, " ".join(args)))
    reap(proc, what)
    return proc.returncode, out, err


def mpirun(opts, np_, *args):
    return [MPIEXEC, "--oversubscribe"] + opts + ["-n", str(np_), exe] + list(args)


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
                          "2", "--tokens", "6000", "--dim", "16", "--queries", "90", "--chunk", "500", "--seed", "9",
                          "-o", trace), "gen", 60)
if rc:
    fail("gen: " + err)

# the 2+2 replay, with the map and each rank's BTL choice logged
replay = ["replay", trace, "--methods", METHODS, "--batch", "10", "--save-outputs", "--quiet", "--seed", "4"]
split_out, shm_out = path("split.h5"), path("shm.h5")
# (mpi_add_procs_cutoff: connect every pair at MPI_Init, so all 12 are logged,
# not only those the replay's collectives happen to use)
rc, out, err = run(mpirun(SPLIT + ["--mca", "btl", "vader,tcp,self", "--display-map", "--mca", "btl_base_verbose",
                                   "100", "--mca", "mpi_add_procs_cutoff", "64"], 4, *replay, "-o", split_out),
                   "2+2 replay", 150)
if rc:
    fail("2+2 replay over two emulated nodes failed (exit %d): %s" % (rc, err[-3000:]))
check_map(out + err)
nv, nt = check_btls(out + err)
print("ok: 2+2 replay: map puts ranks 0,1 on node A (127.0.0.2) and 2,3 on node B (127.0.0.3); %d same-node "
      "pairs use vader, %d cross-node pairs tcp" % (nv, nt))
checks += 1

rc, out, err = run(mpirun(SHM, 4, *replay, "-o", shm_out), "4-rank shared-memory replay", 120)
if rc:
    fail("4-rank shared-memory replay failed (exit %d): %s" % (rc, err[-3000:]))
n = results_equal(shm_out, split_out, "4 ranks on one node vs 2+2 on two emulated nodes")
print("ok: 2+2 over two emulated nodes and 4 ranks over shared memory bitwise equal (%d datasets)" % n)
checks += 1

# vader cannot cross nodes: with it alone the same placement cannot connect
rc, out, err = run(mpirun(SPLIT + ["--mca", "btl", "vader,self"], 4, *replay, "-o", path("vader-only.h5")),
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
proc = start(mpirun(SPLIT + ["--mca", "btl", "vader,tcp,self"], 4, "replay", big, "--methods",
                    "exact,h2o:tokens=2000", "--batch", "16", "--quiet", "-o", path("killed.h5")))


def rank_pid(rank):
    """The pid of rank `rank` among proc's session (its OMPI_COMM_WORLD_RANK)."""
    for p in session_procs(proc.pid):
        try:
            with open("/proc/%d/cmdline" % p, "rb") as f:
                if not f.read().startswith(exe.encode() + b"\0"):
                    continue
            with open("/proc/%d/environ" % p, "rb") as f:
                if b"OMPI_COMM_WORLD_RANK=%d" % rank in f.read().split(b"\0"):
                    return p
        except OSError:
            pass
    return None


victim, t0 = None, time.time()
while victim is None and time.time() - t0 < 30 and proc.poll() is None:
    time.sleep(0.3)
    victim = rank_pid(2)
if victim is None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    fail("kill -9: rank 2 was not found (mpirun exit %s)" % proc.returncode)
time.sleep(1.5)  # let the ranks get into the batches and their collectives
if proc.poll() is not None:
    fail("kill -9: the replay ended before the kill; make the trace bigger")
os.kill(victim, signal.SIGKILL)
t_kill = time.time()
try:
    proc.communicate(timeout=30)
except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    fail("kill -9: job still running 30 s after kill -9 of rank 2 on node B (hang)")
if proc.returncode == 0:
    fail("kill -9: exit 0 although rank 2 was killed")
reap(proc, "kill -9 of rank 2")
print("ok: kill -9 of rank 2 (node B) ended the 2+2 job in %.1f s (exit %d), nothing left behind"
      % (time.time() - t_kill, proc.returncode))
checks += 1
print("check_nodes: %d passed, 0 failed" % checks)
