#!/usr/bin/python3
"""Reference modes: replay --reference memory|stream|none.

usage: check_reference.py KVSTREAM WORKDIR NP [--no-rss]

- --max-memory set to a quarter of the trace's keys and values (so below
  what exact holds per rank): `memory` is refused up front (exit 2, one
  line naming --max-memory), `stream` runs;
- `stream` against `memory`: every method's rel_error within 1e-6 (the
  streamed reference folds chunk by chunk, so only float rounding differs),
  bound_ratio within 1e-6 relative, every non-reference method's outputs and
  memory figures bitwise equal, exact's memory_bytes 0, reference_mode
  attribute `stream`; the process peak RSS (peak_rss_bytes) smaller by at
  least half of what exact holds per rank (not checked with --no-rss: under
  AddressSanitizer RSS says nothing about our buffers);
- `none`: no exact group unless listed, no rel_error / bound_ratio datasets,
  attribute reference = none, outputs bitwise those of the memory run;
  analysis/plot_error_memory.py plots the stream file and skips none's
  methods with a message;
- exact-only replays stopped at a batch boundary: the checkpoint is
  kilobytes with either reference (memory: exact records its token counts
  and --resume re-reads the tokens from the trace; stream: it holds none),
  against the 24 MB of tokens exact holds, and each resumed run is bitwise
  its uninterrupted run;
- exact, topk, window and sinks together (the prefix_state methods): a
  checkpoint under 64 KiB that resumes bitwise (outputs, errors, memory);
- a checkpoint is refused by a run with another --reference; stream with
  --semantics window-unmasked-values is refused (one line, exit 2)."""
import os
import sys

import h5py
import numpy as np

from kvtest import fail, mpi_cmd, run

exe, work, P = sys.argv[1], sys.argv[2], int(sys.argv[3])
check_rss = "--no-rss" not in sys.argv[4:]
os.makedirs(work, exist_ok=True)
S, N, D, M = 2, 120000, 32, 120
TRACE_BYTES = S * N * 2 * D * 4  # keys and values, float32
METHODS = "window:W=512,sinks:S=8,W=256,h2o:tokens=1000,uniform:tokens=1000,subgen:delta=1,t=16,s=128"
checks = 0


def path(name):
    return os.path.join(work, name)


trace = path("tr.h5")
r = run(mpi_cmd(P, exe, "gen", "--kind", "clustered", "--clusters", "16", "--spread", "0.3", "--streams", str(S),
                "--tokens", str(N), "--dim", str(D), "--queries", str(M), "--chunk", "2048", "--seed", "5",
                "-o", trace), timeout=300)
if r.returncode:
    fail("gen: " + r.stderr)


def replay(out, ref, *extra, methods=METHODS):
    return run(mpi_cmd(P, exe, "replay", trace, "--methods", methods, "--reference", ref, "--batch", "16",
                       "--save-outputs", "--quiet", "--seed", "3", "-o", out, *extra), timeout=600)


def first_line(r):
    lines = [l for l in r.stderr.splitlines() if l.startswith("kvstream")]
    return lines[0] if lines else ""


cap = "%d" % (TRACE_BYTES // 4)
r = replay(path("mem-capped.h5"), "memory", "--max-memory", cap)
if r.returncode != 2 or "--max-memory" not in first_line(r):
    fail("memory reference under --max-memory %s: expected exit 2 naming --max-memory, got %d: %s"
         % (cap, r.returncode, r.stderr))
print("ok: --reference memory refused under --max-memory %s (trace %d bytes): %s" % (cap, TRACE_BYTES, first_line(r)))
checks += 1

mem, st = path("memory.h5"), path("stream.h5")
r = replay(mem, "memory")
if r.returncode:
    fail("memory reference: " + r.stderr)
r = replay(st, "stream", "--max-memory", cap)
if r.returncode:
    fail("--reference stream under --max-memory %s failed: %s" % (cap, r.stderr))
with h5py.File(mem, "r") as a, h5py.File(st, "r") as b:
    if b.attrs["reference_mode"] != b"stream" and b.attrs["reference_mode"] != "stream":
        fail("reference_mode of the stream run: %r" % b.attrs["reference_mode"])
    worst = 0.0
    for g in a["methods"]:
        x, y = a["methods"][g], b["methods"][g]
        e = np.abs(x["rel_error"][...] - y["rel_error"][...]).max()
        worst = max(worst, e)
        if e > 1e-6:
            fail("%s: rel_error differs by %.3g between the memory and stream references" % (g, e))
        br, bs = x["bound_ratio"][...], y["bound_ratio"][...]
        if np.abs(br - bs).max() > 1e-6 * max(1.0, np.abs(br).max()):
            fail("%s: bound_ratio differs by %.3g" % (g, np.abs(br - bs).max()))
        if g == "exact":
            if y.attrs["memory_bytes"] != 0 or y.attrs["is_reference"] != 1:
                fail("streamed exact: memory_bytes %d, is_reference %d" % (y.attrs["memory_bytes"],
                                                                          y.attrs["is_reference"]))
            continue
        if not np.array_equal(x["outputs"][...], y["outputs"][...]):
            fail("%s: outputs differ between the runs (they must not depend on the reference)" % g)
        for k in ("memory_bytes", "final_memory_bytes", "peak_rank_bytes"):
            if x.attrs[k] != y.attrs[k]:
                fail("%s: %s differs: %d vs %d" % (g, k, x.attrs[k], y.attrs[k]))
    exact_rank = int(a["methods"]["exact"].attrs["peak_rank_bytes"])
    rss_m, rss_s = int(a.attrs["peak_rss_bytes"]), int(b.attrs["peak_rss_bytes"])
print("ok: --reference stream under --max-memory %s: rel_error within %.2g of the memory reference "
      "(peak RSS %.1f MiB vs %.1f MiB; exact held %.1f MiB per rank)"
      % (cap, worst, rss_s / 2**20, rss_m / 2**20, exact_rank / 2**20))
checks += 1
if check_rss:
    if rss_s > rss_m - exact_rank // 2:
        fail("peak RSS with the streamed reference %d, with the memory one %d: expected at least %d less"
             % (rss_s, rss_m, exact_rank // 2))
    print("ok: peak RSS smaller by %.1f MiB with the streamed reference" % ((rss_m - rss_s) / 2**20))
    checks += 1
else:
    print("not checked: peak RSS (--no-rss: sanitizer build)")

none = path("none.h5")
r = replay(none, "none")
if r.returncode:
    fail("--reference none: " + r.stderr)
with h5py.File(mem, "r") as a, h5py.File(none, "r") as c:
    ref = c.attrs["reference"]
    if (ref.decode() if isinstance(ref, bytes) else ref) != "none" or "exact" in c["methods"]:
        fail("--reference none: reference attribute %r, groups %s" % (ref, list(c["methods"])))
    for g in c["methods"]:
        if "rel_error" in c["methods"][g] or "bound_ratio" in c["methods"][g]:
            fail("--reference none: %s has error datasets" % g)
        if not np.array_equal(a["methods"][g]["outputs"][...], c["methods"][g]["outputs"][...]):
            fail("--reference none: %s outputs differ from the memory run" % g)
print("ok: --reference none: no exact, no rel_error/bound_ratio, outputs bitwise those of the memory run")
checks += 1

# analysis/ copes: a streamed reference holding nothing, methods without rel_error
plot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "analysis", "plot_error_memory.py")
r = run([sys.executable, plot, st, none, "-o", path("plot")])
if r.returncode or not os.path.exists(path("plot.png")) or "has no rel_error: skipped" not in r.stderr:
    fail("plot_error_memory.py on stream and none results: exit %d: %s" % (r.returncode, r.stderr))
print("ok: analysis/plot_error_memory.py reads stream and none results")
checks += 1

# exact-only checkpoints are kilobytes.  At a batch
# boundary (48 = 3 x 16): one stopped inside a batch also holds the batch's
# staged V^T V snapshots, up to B S dv^2 8 bytes (docs/USER_GUIDE.md, "Long runs")
sizes = {}
for ref in ("memory", "stream"):
    ck = path("only-%s.ckpt" % ref)
    r = replay(path("only-%s.h5" % ref), ref, "--checkpoint", ck, "--stop-after", "48", methods="exact")
    if r.returncode != 3 or not os.path.exists(ck):
        fail("exact-only %s replay with --stop-after 48: exit %d: %s" % (ref, r.returncode, r.stderr))
    sizes[ref] = os.path.getsize(ck)
if max(sizes.values()) > 64 * 1024:
    fail("exact-only checkpoints: stream %d bytes, memory %d bytes (expected < 64 KiB each)" % (sizes["stream"],
                                                                                             sizes["memory"]))
print("ok: exact-only checkpoint after 48 of %d queries: %d bytes with --reference stream, %d with memory"
      % (M, sizes["stream"], sizes["memory"]))
checks += 1
ck = path("only-stream.ckpt")
r = replay(path("only-stream-x.h5"), "memory", "--resume", ck, methods="exact")
if r.returncode != 2 or "--reference" not in first_line(r):
    fail("a stream checkpoint resumed with --reference memory: exit %d: %s" % (r.returncode, r.stderr))
print("ok: refused: " + first_line(r))
for ref in ("memory", "stream"):
    ck = path("only-%s.ckpt" % ref)
    r = replay(path("only-%s.h5" % ref), ref, "--checkpoint", ck, "--resume", ck, methods="exact")
    if r.returncode:
        fail("resume of the %s checkpoint: %s" % (ref, r.stderr))
    r = replay(path("only-%s-ref.h5" % ref), ref, methods="exact")
    if r.returncode:
        fail(r.stderr)
    with h5py.File(path("only-%s.h5" % ref), "r") as a, h5py.File(path("only-%s-ref.h5" % ref), "r") as b:
        for d in ("outputs", "rel_error", "bound_ratio"):
            if not np.array_equal(a["methods"]["exact"][d][...], b["methods"]["exact"][d][...]):
                fail("resumed %s run: exact/%s differs from the uninterrupted one" % (ref, d))
        for k in ("memory_bytes", "final_memory_bytes", "peak_rank_bytes", "kept_tokens"):
            if a["methods"]["exact"].attrs[k] != b["methods"]["exact"].attrs[k]:
                fail("resumed %s run: exact's %s differs" % (ref, k))
    print("ok: %s: resumed from the small checkpoint: bitwise the uninterrupted run" % ref)
checks += 2

# the other prefix_state methods (topk, window, sinks) are rebuilt too: a
# checkpoint of all four stays small, and resumes bitwise (memory included)
PS = "exact,topk:k=32,window:W=200,sinks:S=4,W=100"
PSG = ["exact", "topk:k=32", "window:W=200", "sinks:S=4,W=100"]
ck = path("ps.ckpt")
r = replay(path("ps.h5"), "memory", "--checkpoint", ck, "--stop-after", "48", methods=PS)
if r.returncode != 3 or not os.path.exists(ck):
    fail("prefix-state replay with --stop-after 48: exit %d: %s" % (r.returncode, r.stderr))
size = os.path.getsize(ck)
if size > 64 * 1024:
    fail("checkpoint of %s: %d bytes (expected < 64 KiB: their tokens are rebuilt from the trace)" % (PS, size))
r = replay(path("ps.h5"), "memory", "--checkpoint", ck, "--resume", ck, methods=PS)
r2 = replay(path("ps-ref.h5"), "memory", methods=PS)
if r.returncode or r2.returncode:
    fail("prefix-state resume / reference run: %s %s" % (r.stderr, r2.stderr))
with h5py.File(path("ps.h5"), "r") as a, h5py.File(path("ps-ref.h5"), "r") as b:
    for g in PSG:
        for d in ("outputs", "rel_error", "bound_ratio"):
            if not np.array_equal(a["methods"][g][d][...], b["methods"][g][d][...]):
                fail("resumed prefix-state run: %s/%s differs from the uninterrupted one" % (g, d))
        for k in ("memory_bytes", "final_memory_bytes", "peak_rank_bytes", "kept_tokens"):
            if a["methods"][g].attrs[k] != b["methods"][g].attrs[k]:
                fail("resumed prefix-state run: %s's %s differs" % (g, k))
print("ok: checkpoint of %s after 48 of %d queries: %d bytes; resumed bitwise" % (PS, M, size))
checks += 1

r = replay(path("bad.h5"), "stream", "--semantics", "window-unmasked-values", "--window", "100", methods="exact")
if r.returncode != 2 or "--reference stream" not in first_line(r):
    fail("stream with window-unmasked-values: exit %d: %s" % (r.returncode, r.stderr))
print("ok: refused: " + first_line(r))
checks += 1
print("check_reference: %d passed, 0 failed" % checks)
