#!/usr/bin/env bash
# Install the Debian 12 packages kvstream needs (only those missing).
# Needs root; as a normal user it uses sudo if there is one.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
      python3-numpy python3-h5py python3-matplotlib python3-torch slurm-wlm munge
      clang libclang-rt-14-dev valgrind procps)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PKGS[@]} Debian packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "deps: missing packages (${missing[*]}) and not root; install them as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# slurm-wlm's post-install tries to start services; without systemd that is harmless
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
