#!/usr/bin/env bash
# Reproduce docs/SUBGEN_STUDY.md: SubGen (both estimators) against
# uniform and window at equal budgets on traces recorded from the bundled
# llama2.c model (tests/data/stories260K.bin, head_dim 8, trained context 512),
# 4,096 (the length of the first study's trace), 16,384 and 32,768 positions; how clusterable its post-RoPE keys are; the
# cluster cap on synthetic clustered keys (memory flat in n, tiny delta); and
# bench_subgen.  Everything is written into out/subgen-study/; the tables of
# the study are printed at the end and kept in out/subgen-study/summary.txt.
# One rank, one thread throughout, so ingest rates are per core.
#
#   bash scripts/run-subgen-study.sh [build-dir (default build)]
#
# KVSTREAM_STUDY_LONG=0 skips the 32,768-position trace (recording costs
# O(N^2): ~1 minute for 16,384 positions on one core, ~4 for 32,768).  Timings
# are only meaningful on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
[ -x "$BUILD/kvstream" ] && [ -x "$BUILD/bench/bench_subgen" ] || {
  bash scripts/build.sh "$BUILD"
  cmake --build "$BUILD" --target bench_subgen -j1
}
KV="$BUILD/kvstream"
PY=/usr/bin/python3
OUT=out/subgen-study
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
RUN="mpirun --oversubscribe -np 1"
LENS="16384"
[ "${KVSTREAM_STUDY_LONG:-1}" != 0 ] && LENS="16384 32768"

# 1. Record (greedy from BOS), then keep the queries of every (N/1024)-th
#    position (both query heads; 2,048 query rows per stream): the keys and
#    values are the whole trace, only the number of scored queries shrinks.
#    The 4,096-position trace keeps all its queries (section 4a).
for N in $LENS; do
  T=$OUT/story$N.h5
  [ -f "$T" ] || $RUN "$KV" record --model tests/data/stories260K.bin --tokens "$N" -o "$T"
  EVERY=$((N / 1024))
  [ -f "$OUT/story$N-q.h5" ] || $PY - "$T" "$OUT/story$N-q.h5" "$EVERY" <<'EOF'
import sys, h5py, numpy as np
src, dst, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
    for k, v in f.attrs.items():
        g.attrs[k] = v
    qp = f["query_pos"][...]
    sel = np.nonzero(qp % every == 0)[0]
    for name in f:
        ds = f[name]
        if name in ("queries", "model_outputs"):
            data = ds[:, sel, :]
        elif name == "query_pos":
            data = qp[sel]
        else:
            data = ds[...]
        out = g.create_dataset(name, data=data, chunks=True if data.ndim else None)
        for k, v in ds.attrs.items():
            out.attrs[k] = v
print(f"{dst}: {len(sel)} of {len(qp)} query rows (positions divisible by {every})")
EOF
done

# 2. Geometry of the real keys: norms, nearest-neighbour distance, r = scale |q|.
$PY - "$OUT/story16384.h5" > "$OUT/keystats.txt" <<'EOF'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
K, Q, sc = f["keys"], f["queries"], float(f.attrs["scale"])
S, n, d = K.shape
rng = np.random.default_rng(0)
print("stream |k|_median |k|_p99 nn_dist_median r_median r*nn")
rows = []
for s in range(S):
    k = K[s].astype(np.float64)
    nrm = np.linalg.norm(k, axis=1)
    idx = rng.choice(n, 512, replace=False)
    dd = np.sqrt(((k[idx, None, :] - k[None, :, :]) ** 2).sum(-1))
    dd[np.arange(512), idx] = np.inf
    nn = np.median(dd.min(1))
    r = np.median(sc * np.linalg.norm(Q[s, ::8].astype(np.float64), axis=1))
    rows.append((np.median(nrm), np.quantile(nrm, .99), nn, r, r * nn))
    print(s, " ".join(f"{x:.3f}" for x in rows[-1]))
print("median", " ".join(f"{x:.3f}" for x in np.median(np.array(rows), axis=0)))
EOF

# 3. Clusterability: clusters SubGen opens without a cap, per delta (16,384
#    positions x 20 streams = 327,680 keys).  Quadratic at small delta.
M=exact
for x in 0.25 0.5 1 2 4 8; do M="$M,subgen:delta=$x,clusters=1000000000,t=1,s=1,name=unc-${x/./p}"; done
$RUN "$KV" replay "$OUT/story16384-q.h5" --methods "$M" --no-bound-ratio -q -o "$OUT/clusterability16k.h5"

# 4a. Defaults on the first study's 4,096-position trace (the default cap,
#     max(4096, 16 sqrt(n)), does not bind at n <= 4096).
[ -f "$OUT/story4096.h5" ] || $RUN "$KV" record --model tests/data/stories260K.bin --tokens 4096 -o "$OUT/story4096.h5"
$RUN "$KV" replay "$OUT/story4096.h5" -q -o "$OUT/defaults4096.h5" --methods \
  "exact,subgen,subgen:joint=1,name=subgen-joint,subgen:budget=10%,name=subgen-b10,subgen:budget=10%,joint=1,name=subgen-joint-b10,uniform:budget=10%,name=uniform-b10"

# 4. Equal budgets on the real traces: error, memory, clusters, ingest rate.
for N in $LENS; do
  $RUN "$KV" pareto "$OUT/story$N-q.h5" --methods uniform,window,subgen,subgen:joint=1,name=subgen-joint \
    --budgets 5%,10%,25% --seeds 2 -q -o "$OUT/pareto$N.h5"
  $RUN "$KV" replay "$OUT/story$N-q.h5" -q -o "$OUT/defaults$N.h5" --methods \
    "exact,subgen,subgen:joint=1,name=subgen-joint,subgen:budget=10%,name=subgen-b10,subgen:budget=10%,joint=1,name=subgen-joint-b10"
done

# 5. Synthetic clustered keys (64 clusters, spread 0.05, d = 64: members ~0.57
#    apart, so the default delta = 1 finds them): memory of `subgen` with no
#    parameters against n; a tiny delta against delta = 1 (cap, budget).
for N in 8192 32768 131072; do
  T=$OUT/clu-$N.h5
  [ -f "$T" ] || $RUN "$KV" gen --kind clustered --clusters 64 --spread 0.05 --streams 2 --tokens "$N" --dim 64 \
    --queries 128 --seed 1 -o "$T"
  $RUN "$KV" replay "$T" --methods exact,subgen,subgen:joint=1,name=subgen-joint -q -o "$OUT/flat-$N.h5"
done
for N in 8192 32768 131072; do
  $RUN "$KV" replay "$OUT/clu-$N.h5" -q -o "$OUT/tiny-delta-$N.h5" --methods \
    "exact,subgen:delta=1,name=d1,subgen:delta=0.01,name=d001,subgen:delta=0.01,budget=10%,name=d001-b10,subgen:delta=0.01,budget=1%,name=d001-b1"
done
# without the cap a tiny delta is quadratic: compare on 32,768 tokens
$RUN "$KV" replay "$OUT/clu-32768.h5" -q -o "$OUT/tiny-delta-uncapped.h5" --methods \
  "exact,subgen:delta=1,name=d1,subgen:delta=0.01,name=d001,subgen:delta=0.01,clusters=1000000000,name=d001-uncapped"

# 6. Throughput with the cap at 64 and 1024 clusters, d = 128.
( time "$BUILD/bench/bench_subgen" 20 2 ) 2>&1 | tee "$OUT/bench_subgen.txt"

# 7. Tables.
$PY - "$OUT" "$LENS" <<'EOF' | tee "$OUT/summary.txt"
import sys, h5py, numpy as np
out, lens = sys.argv[1], sys.argv[2].split()
def groups(path):
    f = h5py.File(path, "r")
    S, n = int(f.attrs["streams"]), int(f.attrs["tokens"])
    exact = int(f["methods/exact"].attrs["memory_bytes"])
    for lab in f["methods"]:
        g = f["methods"][lab]; a = g.attrs
        e = g["rel_error"][...]
        ing = float(a["ingest_seconds"])
        yield dict(label=lab, mem=int(a["memory_bytes"]), pct=100.0 * int(a["memory_bytes"]) / exact,
                   clusters=int(a["clusters"]), mean=float(np.mean(e)), p50=float(np.median(e)),
                   p95=float(np.quantile(e, .95)), max=float(np.max(e)), finite=bool(np.all(np.isfinite(e))),
                   stream_median=float(np.median(e.mean(axis=1))),
                   bound95=float(np.quantile(g["bound_ratio"][...], .95)) if "bound_ratio" in g else float("nan"),
                   rate=S * n / ing if ing > 0 else float("nan"), S=S, n=n, exact=exact)
def table(path, title):
    print(f"\n## {title}  ({path})")
    print(f"{'label':26s} {'memory':>10s} {'%exact':>7s} {'clusters':>9s} {'p50':>9s} {'p95':>9s} {'mean':>9s} "
          f"{'max':>9s} {'p95bound':>9s} {'ingest tok/s':>12s}")
    for r in groups(path):
        print(f"{r['label']:26s} {r['mem']:10d} {r['pct']:7.2f} {r['clusters']:9d} {r['p50']:9.3g} {r['p95']:9.3g} "
              f"{r['mean']:9.3g} {r['max']:9.3g} {r['bound95']:9.3g} {r['rate']:12.4g}"
              + ("" if r["finite"] else "  NON-FINITE"))
print(open(f"{out}/keystats.txt").read().splitlines()[-1].replace("median", "key geometry, median over streams: |k| |k|_p99 nn r r*nn ="))
f = h5py.File(f"{out}/clusterability16k.h5", "r")
tot = int(f.attrs["streams"]) * int(f.attrs["tokens"])
print("\n## clusters without a cap, 16,384 positions x 20 streams (%d keys)" % tot)
for lab in f["methods"]:
    if lab != "exact":
        c = int(f["methods"][lab].attrs["clusters"])
        print(f"  {lab:10s} {c:7d} clusters = {100.0 * c / tot:5.1f}% of the keys")
table(f"{out}/defaults4096.h5", "defaults and budget=10%, 4096 positions (all queries)")
for N in lens:
    table(f"{out}/pareto{N}.h5", f"equal budgets, {N} positions")
    table(f"{out}/defaults{N}.h5", f"defaults and budget=10%, {N} positions")
for N in (8192, 32768, 131072):
    table(f"{out}/flat-{N}.h5", f"clustered synthetic, n = {N}")
for N in (8192, 32768, 131072):
    table(f"{out}/tiny-delta-{N}.h5", f"tiny delta, n = {N}")
table(f"{out}/tiny-delta-uncapped.h5", "tiny delta without the cap, n = 32768")
EOF
