#!/usr/bin/env bash
# Usage: .ci/apt_install.sh COMMAND PACKAGE: install Debian's PACKAGE unless COMMAND is already on PATH.
set -euo pipefail
if command -v "$1" >/dev/null; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$2" >/dev/null
