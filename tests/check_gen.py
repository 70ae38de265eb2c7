#!/usr/bin/python3
"""kvstream gen writes identical traces for 1, 2 and 3 ranks (same seed), a
different trace for another seed, and the generated data has the moments
its kind promises (index and packing: the same picked beta for every rank
count, probes at the end; packing: each stream its own separated, cyclic
point set).  usage: check_gen.py KVSTREAM WORKDIR"""
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work = sys.argv[1], sys.argv[2]
checks = 0
for kind, extra in (("gaussian", []), ("clustered", ["--clusters", "4", "--spread", "0.05"]), ("jl", []), ("sphere", ["--radius", "2"]),
                    ("index", []), ("packing", ["--theta", "1.0"])):
    files = []
    for np_, seed in ((1, 7), (2, 7), (3, 7), (1, 8)):
        out = "%s/gen_%s_%d_%d.h5" % (work, kind, np_, seed)
        r = run(mpi_cmd(np_, exe, "gen", "--kind", kind, "--streams", "2", "--tokens", "1000", "--dim", "16",
                        "--queries", "9", "--chunk", "128", "--seed", str(seed), "-o", out, *extra), timeout=120)
        if r.returncode != 0:
            fail("gen %s np=%d failed: %s" % (kind, np_, r.stderr))
        files.append(h5py.File(out, "r"))
    for name in ("keys", "values", "queries", "query_pos"):
        a = files[0][name][...]
        for f in files[1:3]:
            if not np.array_equal(a, f[name][...]):
                fail("%s: /%s differs between rank counts" % (kind, name))
        checks += 1
    if np.array_equal(files[0]["keys"][...], files[3]["keys"][...]):
        fail("%s: seeds 7 and 8 gave the same keys" % kind)
    pos = files[0]["query_pos"][...]
    if pos[-1] != 1000 or np.any(np.diff(pos) < 0) or pos[0] < 1:
        fail("%s: query_pos %s" % (kind, pos))
    K = files[0]["keys"][...]
    if kind == "gaussian" and not (abs(K.mean()) < 0.05 and abs(K.std() - 1) < 0.05):
        fail("gaussian keys mean %.3f std %.3f" % (K.mean(), K.std()))
    if kind == "sphere" and not np.allclose(np.linalg.norm(K, axis=2), 2.0, rtol=1e-5):
        fail("sphere keys not on the radius-2 sphere")
    if kind in ("index", "packing"):
        for k in ("beta", "target_mass_min"):
            if files[0].attrs[k] != files[1].attrs[k] or files[0].attrs[k] != files[2].attrs[k]:
                fail("%s: attribute %s differs between rank counts" % (kind, k))
        if not (pos == 1000).all():
            fail("%s: probes not at the end: %s" % (kind, pos))
    if kind == "packing":
        # two streams, each its own theta-separated set
        N = int(files[0].attrs["points"])
        for s in range(2):
            P = K[s, :N].astype(float)
            G = P @ P.T
            np.fill_diagonal(G, -1)
            if np.arccos(min(1.0, G.max())) < 1.0 - 1e-6 or not np.array_equal(K[s], K[s][np.arange(1000) % N]):
                fail("packing stream %d: points not 1.0-separated or not cyclic" % s)
        if np.array_equal(K[0, :N], K[1, :N]):
            fail("packing: both streams have the same points")
    if kind == "jl":
        if "query_target" not in files[0]:
            fail("jl trace lacks /query_target")
        tgt = files[0]["query_target"][...]
        Q = files[0]["queries"][...]
        for s in range(2):
            for j in range(9):
                if not (0 <= tgt[s, j] < pos[j]):
                    fail("jl target %d outside prefix %d" % (tgt[s, j], pos[j]))
                cos = Q[s, j] @ K[s, tgt[s, j]] / np.linalg.norm(Q[s, j])
                if abs(cos - 1) > 1e-5:
                    fail("jl query is not a multiple of its target key")
    if kind == "clustered":
        # 4 clusters with spread 0.05: every key is within 0.05*sqrt(d)*3 of one of 4 points
        k = K[0]
        d2 = ((k[:, None, :] - k[None, :50, :]) ** 2).sum(-1)
        close = (d2 < (0.05 * 4 * 3) ** 2 * 2).any(1)
        if not close.all():
            fail("clustered keys are not clustered")
    checks += 1
    for f in files:
        f.close()
print("check_gen: %d passed, 0 failed" % checks)
