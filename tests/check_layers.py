#!/usr/bin/python3
"""The architecture rules of CMakeLists.txt, checked on the sources.

usage: check_layers.py ROOT name=dir=dep1,dep2, ...   (the KV_LAYERS list)
1. A file in a layer's folder (or a subfolder of it) includes project headers by folder path
   ("core/kverr.h"), only from its own layer or from one it declares.
2. No MPI collective (or point-to-point call) outside mpi/.
3. No abort() or exit() in library code (every layer but cmd, and main.c):
   errors are returned.
4. No HDF5 call outside io/: every file is read and written through it.
5. No two source files of the same name in different folders: a name says
   one job (cmd/ files are cmd_NAME.c beside the layer that does NAME)."""
import os
import re
import sys

root, specs = sys.argv[1], sys.argv[2:]
layers = {}
for s in specs:
    name, d, deps = s.split("=")
    layers[name] = (d, {x for x in deps.split(",") if x})
by_prefix = set(layers)
COLL = re.compile(r"\bMPI_(Allreduce|Reduce|Bcast|Barrier|Allgather|Allgatherv|Gather|Gatherv|Scatter|"
                  r"Scatterv|Alltoall|Alltoallv|Send|Recv|Isend|Irecv|Sendrecv|Exscan|Scan|Ireduce|"
                  r"Iallreduce|Ibcast|Init|Init_thread|Finalize)\s*\(")
ABORT = re.compile(r"\b(abort|exit)\s*\(")
HDF5 = re.compile(r"\bH5[A-Z][A-Za-z0-9_]*\s*\(")
problems, files = [], 0
seen = {}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


for name, (d, deps) in sorted(layers.items()):
    folder = os.path.join(root, d)
    for f in sorted(os.path.relpath(os.path.join(p, x), folder) for p, _, xs in os.walk(folder) for x in xs):
        if not f.endswith((".c", ".h")):
            continue
        files += 1
        path = os.path.join(d, f)
        seen.setdefault(os.path.basename(f), set()).add(os.path.dirname(path))
        text = strip_comments(open(os.path.join(folder, f)).read())
        for ln, line in enumerate(text.splitlines(), 1):
            m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
            if m:
                inc = m.group(1)
                top = inc.split("/")[0] if "/" in inc else None
                if top not in by_prefix:
                    problems.append("%s:%d: include \"%s\" is not by layer folder" % (path, ln, inc))
                elif top != name and top not in deps:
                    problems.append("%s:%d: layer %s includes %s, which it does not declare (declared: %s)"
                                    % (path, ln, name, inc, ", ".join(sorted(deps)) or "none"))
            if name != "mpi" and COLL.search(line):
                problems.append("%s:%d: MPI collective outside mpi/: %s" % (path, ln, line.strip()))
            if name != "io" and HDF5.search(line):
                problems.append("%s:%d: HDF5 call outside io/: %s" % (path, ln, line.strip()))
            if name != "cmd" and ABORT.search(line):
                problems.append("%s:%d: abort/exit in library code: %s" % (path, ln, line.strip()))
main = strip_comments(open(os.path.join(root, "src", "main.c")).read())
for ln, line in enumerate(main.splitlines(), 1):
    if COLL.search(line):
        problems.append("src/main.c:%d: MPI call outside mpi/: %s" % (ln, line.strip()))
    if HDF5.search(line):
        problems.append("src/main.c:%d: HDF5 call outside io/: %s" % (ln, line.strip()))
for base, dirs in sorted(seen.items()):
    if len(dirs) > 1:
        problems.append("%s: the same file name in %s (one name, one job: rename one)" % (base, ", ".join(sorted(dirs))))
for p in problems:
    print(p)
print("check_layers: %d files in %d layers" % (files, len(layers)))
if problems:
    print("check_layers: 0 passed, %d failed" % len(problems))
    sys.exit(1)
print("check_layers: 1 passed, 0 failed")
