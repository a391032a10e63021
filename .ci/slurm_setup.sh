#!/usr/bin/env bash
# Install the daemons and clients of a one-node SLURM cluster (Debian slurm-wlm + munge) for the sweep tests.
# The tests (tests/slurm_cluster.py) write their own slurm.conf and munge key in a temporary directory, start munged,
# slurmctld and slurmd on 127.0.0.1 and stop them at the end; nothing is started here, and no system service is used.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
   && command -v sbatch >/dev/null; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
