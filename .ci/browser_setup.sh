#!/usr/bin/env bash
# Install Debian's chromium for tests/test_report_html.py, which opens report.html in a headless browser and counts
# the images it decoded. Nothing is started here; the test runs `chromium --headless` itself.
set -euo pipefail
if command -v chromium >/dev/null; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
