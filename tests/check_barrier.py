#!/usr/bin/python3
"""The lower-bound instances carry what their proofs rely on.

usage: check_barrier.py KVSTREAM WORKDIR NP
- index (d = 48 >= 4 ln n): every query is a probe at position n; exact
  attention puts >= 0.9 of its mass on the target, and beta is just large
  enough (the least mass over probes is below 0.92); the sign of the exact
  output decodes the target's value bits, while a non-target token's bits
  match only about half the time.
- packing (d = 4): the N points are theta-separated unit vectors (least
  pairwise angle >= theta), a few hundred of them; token i carries point
  i mod N (key and value bits); beta >= (ln N + ln 9) / (1 - cos theta); the
  probe's target point gets >= 0.9 of the mass and its bits decode; with
  n < N the probes only ask for points seen.
- both traces are bitwise the same for NP ranks and for 1 rank.
- a small sweep judges the state at n: on index the least memory over
  methods grows >= x2.5 for x4 tokens; on packing SubGen (clusters searched)
  meets eps with the same memory at n = 1024 and 4096, and keeps_all is
  reported; analysis/barrier.py's slopes agree with the table's numbers.
- `--query-at last` puts the probes at the last m positions.
- `sweep --score bits` (fraction of the target's bits the output's sign gets
  wrong, p95 over probes) agrees with numpy on the saved outputs.
- `gen --kind index --beta 3` is refused with one line and exit status 2,
  and so is packing with --every-position."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work, nprocs = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(work, exist_ok=True)
checks = 0


def gen(kind, n, d, np_, tag, extra=()):
    out = os.path.join(work, "%s-%s-np%d.h5" % (kind, tag, np_))
    r = run(mpi_cmd(np_, exe, "gen", "--kind", kind, "--tokens", str(n), "--dim", str(d), "--queries", "40",
                    "--chunk", "256", "--seed", "11", "-o", out, *extra), timeout=300)
    if r.returncode != 0:
        fail("gen %s failed: %s" % (kind, r.stderr))
    return out


def load(path):
    with h5py.File(path, "r") as t:
        x = {k: t[k][...] for k in ("keys", "values", "queries", "query_pos", "query_target")}
        x["attrs"] = dict(t.attrs)
    return x


def same_for_ranks(kind, n, d, tag):
    a = gen(kind, n, d, nprocs, tag)
    if nprocs > 1:
        b = gen(kind, n, d, 1, tag)
        ta, tb = load(a), load(b)
        for k in ("keys", "values", "queries", "query_pos", "query_target"):
            if not np.array_equal(ta[k], tb[k]):
                fail("%s: /%s differs between %d ranks and 1" % (kind, k, nprocs))
        for k in ("beta", "target_mass_min"):
            if ta["attrs"][k] != tb["attrs"][k]:
                fail("%s: attribute %s differs between %d ranks and 1" % (kind, k, nprocs))
    return load(a)


def exact(t, s, j):
    K, V, Q = t["keys"][s].astype(float), t["values"][s].astype(float), t["queries"][s].astype(float)
    p = int(t["query_pos"][j])
    a = t["attrs"]["scale"] * (K[:p] @ Q[j])
    w = np.exp(a - a.max())
    w /= w.sum()
    return w, w @ V[:p]


# ---- index -------------------------------------------------------------------
n, d = 1024, 48
t = same_for_ranks("index", n, d, "a")
if not (t["query_pos"] == n).all() or t["attrs"]["probes"].decode() != "end":
    fail("index: probes are not all at position n")
beta = float(t["attrs"]["beta"])
masses, agree_other = [], []
rng = np.random.default_rng(0)
for j in range(len(t["query_pos"])):
    tgt = int(t["query_target"][0, j])
    # the query is beta sqrt(d) times the target key: logit beta on the target
    if abs(t["attrs"]["scale"] * t["queries"][0, j].astype(float) @ t["keys"][0, tgt] - beta) > 1e-4 * beta:
        fail("index: probe %d's logit on its target is not beta" % j)
    w, z = exact(t, 0, j)
    masses.append(w[tgt])
    if not np.array_equal(np.sign(z), t["values"][0, tgt]):
        fail("index: the exact output of probe %d does not decode its target's bits" % j)
    other = (tgt + 1 + int(rng.integers(n - 1))) % n
    agree_other.append(np.mean(np.sign(z) == t["values"][0, other]))
if min(masses) < 0.9:
    fail("index: a probe puts only %.4f of its mass on the target" % min(masses))
if min(masses) > 0.92:
    fail("index: beta %.3f is more than needed (least mass %.4f)" % (beta, min(masses)))
if abs(min(masses) - t["attrs"]["target_mass_min"]) > 1e-3:
    fail("index: recorded target_mass_min %.4f, measured %.4f" % (t["attrs"]["target_mass_min"], min(masses)))
# 40 probes x 48 bits of a wrong token: mean agreement 0.5 +- 0.011
if not 0.4 < np.mean(agree_other) < 0.6:
    fail("index: a non-target token's bits agree with the output %.3f of the time" % np.mean(agree_other))
print("index n=%d d=%d: beta %.3f, least target mass %.4f, decoded 40/40 probes" % (n, d, beta, min(masses)))
checks += 1

# ---- packing -----------------------------------------------------------------
for n, tag in ((2048, "big"), (100, "small")):
    d = 4
    t = same_for_ranks("packing", n, d, tag)
    N, theta, beta = int(t["attrs"]["points"]), float(t["attrs"]["theta"]), float(t["attrs"]["beta"])
    if not 2 <= N < 1024:
        fail("packing d=4: N = %d points, expected a few hundred" % N)
    K = t["keys"][0].astype(float)
    P = K[: min(n, N)]
    if n > N:
        i = np.arange(n)
        if not (np.array_equal(t["keys"][0], t["keys"][0][i % N]) and
                np.array_equal(t["values"][0], t["values"][0][i % N])):
            fail("packing: token i does not carry point i mod N")
        G = P @ P.T
        np.fill_diagonal(G, -1)
        # float64 dot of float32 unit vectors: ~1e-7 off the generator's angle
        least = np.arccos(min(1.0, G.max()))
        if least < theta - 1e-6 or least > 0.45:
            fail("packing: least angle %.6f, recorded theta %.6f" % (least, theta))
        if abs(np.linalg.norm(P, axis=1) - 1).max() > 1e-6:
            fail("packing: points are not unit vectors")
    if not (np.abs(t["values"][0]) == 1).all():
        fail("packing: values are not +-1 bits")
    if beta < (np.log(N) + np.log(9)) / (1 - np.cos(theta)):
        fail("packing: beta %.3f below (ln N + ln 9) / (1 - cos theta)" % beta)
    least_mass = 1.0
    for j in range(len(t["query_pos"])):
        a = int(t["query_target"][0, j])
        if not a < min(n, N):
            fail("packing: probe %d asks for point %d, not among the %d seen" % (j, a, min(n, N)))
        w, z = exact(t, 0, j)
        copies = np.arange(n) % N == a
        least_mass = min(least_mass, w[copies].sum())
        if not np.array_equal(np.sign(z), t["values"][0, a]):
            fail("packing: probe %d does not decode its point's bits" % j)
    if least_mass < 0.9:
        fail("packing: a probe puts only %.4f of its mass on its point" % least_mass)
    print("packing n=%d d=4: N %d, theta %.4f, beta %.2f, least target mass %.4f" % (n, N, theta, beta, least_mass))
    checks += 1

# ---- the sweep judges the state at n -----------------------------------------
def sweep(kind, ns, d, methods, eps):
    out = os.path.join(work, "sweep-%s-np%d.h5" % (kind, nprocs))
    r = run(mpi_cmd(nprocs, exe, "sweep", "--kind", kind, "--n", ",".join(map(str, ns)), "--d", str(d), "--methods",
                    methods, "--eps", str(eps), "--queries", "32", "--seed", "3", "--workdir", work, "-o", out),
            timeout=600)
    print(r.stdout)
    if r.returncode != 0:
        fail("sweep %s failed: %s" % (kind, r.stderr))
    with h5py.File(out, "r") as f:
        g = f["sweep"]
        c = {k: g[k][...] for k in g}
        if f.attrs["query_at"].decode() != "end":
            fail("sweep %s: query_at is not end" % kind)
    for i in range(len(c["n"])):
        if c["keeps_all"][i] != (c["met"][i] and c["budget_bytes"][i] >= c["exact_bytes"][i]):
            fail("sweep %s row %d: keeps_all disagrees with budget vs exact_bytes" % (kind, i))
    return {(c["method"][i].decode(), int(c["n"][i])): (int(c["budget_bytes"][i]), int(c["met"][i]))
            for i in range(len(c["n"]))}


ms = "window:W=@,uniform:tokens=@"
s = sweep("index", (256, 1024), 48, ms, 0.1)
least = [min(s[(m, n)][0] for m in ms.split(",") if s[(m, n)][1]) for n in (256, 1024)]
if least[1] < 2.5 * least[0]:
    fail("index: least memory x%.2f for x4 tokens (expected ~linear)" % (least[1] / least[0]))
checks += 1
s = sweep("packing", (1024, 4096), 4, "subgen:delta=0.1,t=1,joint=1,clusters=@,name=sg,window:W=@", 0.1)
if not (s[("sg", 1024)][1] and s[("sg", 4096)][1]):
    fail("packing: SubGen did not meet eps")
if s[("sg", 4096)][0] > 1.25 * s[("sg", 1024)][0]:
    fail("packing: SubGen's memory grew x%.2f from n=1024 to 4096" % (s[("sg", 4096)][0] / s[("sg", 1024)][0]))
checks += 1

# --query-at last: the last m positions, probes still concentrated
t = load(gen("index", 300, 48, nprocs, "last", ("--query-at", "last")))
if not np.array_equal(t["query_pos"], np.arange(261, 301)) or t["attrs"]["probes"].decode() != "last":
    fail("index --query-at last: positions %s" % t["query_pos"])
for j in range(len(t["query_pos"])):
    if exact(t, 0, j)[0][int(t["query_target"][0, j])] < 0.9:
        fail("index --query-at last: probe %d below 0.9 on its target" % j)
checks += 1

# the figure's script on the two sweeps: slopes from the table's own numbers
r = run(["/usr/bin/python3", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "analysis", "barrier.py"),
         os.path.join(work, "sweep-index-np%d.h5" % nprocs), os.path.join(work, "sweep-packing-np%d.h5" % nprocs),
         "-o", os.path.join(work, "fig")])
if r.returncode != 0:
    fail("analysis/barrier.py failed: %s" % r.stderr)
import csv  # noqa: E402
with open(os.path.join(work, "fig.csv")) as fh:
    got = {(x["kind"], x["series"]): float(x["slope"]) for x in csv.DictReader(fh)}
want_index = np.log(least[1] / least[0]) / np.log(4)
want_sg = np.log(s[("sg", 4096)][0] / s[("sg", 1024)][0]) / np.log(4)
if abs(got[("index", "least over methods")] - want_index) > 1e-3 or abs(got[("packing", "sg")] - want_sg) > 1e-3:
    fail("analysis/barrier.py slopes %s, expected index %.3f, packing sg %.3f" % (got, want_index, want_sg))
if os.path.getsize(os.path.join(work, "fig.png")) < 10000:
    fail("analysis/barrier.py wrote no real figure")
checks += 1

# --score bits: the sweep's p95 of wrong bits equals numpy's on the saved outputs
out = os.path.join(work, "sweep-bits-np%d.h5" % nprocs)
r = run(mpi_cmd(nprocs, exe, "sweep", "--kind", "index", "--n", "512", "--d", "48", "--methods", "window:W=@",
                "--eps", "0.02", "--score", "bits", "--queries", "64", "--seed", "3", "--workdir", work, "--keep-traces",
                "-o", out), timeout=300)
if r.returncode != 0:
    fail("sweep --score bits failed: %s" % r.stderr)
with h5py.File(out, "r") as f:
    W, got = int(f["sweep"]["param"][0]), float(f["sweep"]["p95_error"][0])
    if f.attrs["score"].decode() != "bit_error" or not f["sweep"]["met"][0]:
        fail("sweep --score bits: score attribute or met")
trace = os.path.join(work, "sweep-index-n512-d48-seed3.h5")
for w_, must_meet in ((W, True), (W // 2, False)):
    res = os.path.join(work, "bits-W%d.h5" % w_)
    r = run(mpi_cmd(nprocs, exe, "replay", trace, "--methods", "window:W=%d,name=w" % w_, "--save-outputs", "-q",
                    "-o", res))
    if r.returncode != 0:
        fail("replay for the bit check failed: %s" % r.stderr)
    t = load(trace)
    with h5py.File(res, "r") as f:
        z = f["methods/w/outputs"][0]
    vt = t["values"][0][t["query_target"][0]]
    wrong = np.sort(np.mean(~(np.sign(z) == vt), axis=1))
    p95 = wrong[int(np.ceil(0.95 * len(wrong))) - 1]  # nearest rank, as replay's p95
    if w_ == W and p95 != got:
        fail("sweep --score bits: p95 %g, numpy on the outputs %g" % (got, p95))
    if (p95 <= 0.02) != must_meet:
        fail("sweep --score bits: W=%d gives p95 bit error %g" % (w_, p95))
print("score bits: W = %d decodes (p95 wrong bits %g), W = %d does not" % (W, got, W // 2))
checks += 1

r = run(mpi_cmd(nprocs, exe, "gen", "--kind", "packing", "--tokens", "64", "--dim", "4", "--every-position", "-o",
                os.path.join(work, "bad.h5")))
if r.returncode != 2 or "every-position" not in r.stderr:
    fail("gen --kind packing --every-position was not refused: %s" % r.stderr)
r = run(mpi_cmd(nprocs, exe, "gen", "--kind", "index", "--tokens", "64", "--dim", "48", "--beta", "3", "-o",
                os.path.join(work, "bad.h5")))
ours = [x for x in r.stderr.splitlines() if x.startswith("kvstream")]  # mpiexec adds its own lines
if r.returncode != 2 or len(ours) != 1 or "beta" not in ours[0]:
    fail("gen --kind index --beta 3: status %d, stderr %r" % (r.returncode, r.stderr))
checks += 1
print("OK: %d checks" % checks)
