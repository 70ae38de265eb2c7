#!/bin/sh
# Stand-in for ssh as Open MPI's launch agent (--mca plm_rsh_agent), so that
# one machine plays several "nodes" (tests/check_nodes.py).
#
# mpirun calls it as `fake_rsh.sh [-options] HOST COMMAND...` to start an
# orted on HOST; this runs COMMAND here instead, through a shell as sshd
# would.  Every emulated node needs what a real node has of its own: all of
# them share one hostname (so Open MPI 4.1 names vader segments and session
# directories alike), so each HOST gets its own vader backing directory and
# session-directory base under $KV_NODES_DIR/HOST.  Without that, rank 0 of
# two nodes opens the same /dev/shm segment (measured: segfaults in vader).
# orted hands its environment to the ranks it starts, so these reach them.
set -eu
while [ $# -gt 0 ]; do
  case "$1" in -*) shift ;; *) break ;; esac
done
if [ $# -lt 2 ]; then
  echo "fake_rsh.sh: usage: fake_rsh.sh [-options] HOST COMMAND..." >&2
  exit 2
fi
if [ -z "${KV_NODES_DIR:-}" ]; then
  echo "fake_rsh.sh: KV_NODES_DIR is not set (the directory that holds each emulated node's files)" >&2
  exit 2
fi
host=$1
shift
case "$host" in
  *[!A-Za-z0-9._-]* | .* ) echo "fake_rsh.sh: bad host name '$host'" >&2; exit 2 ;;
esac
node=$KV_NODES_DIR/$host
mkdir -p "$node/shm" "$node/tmp"
export OMPI_MCA_btl_vader_backing_directory="$node/shm" OMPI_MCA_orte_tmpdir_base="$node/tmp"
exec /bin/sh -c "$*"
