#!/usr/bin/env bash
# Install Debian's texlive-latex-base for tests/test_report_macros.py, which compiles a document that inputs a
# report's macros.tex with `pdflatex -interaction=nonstopmode -halt-on-error`. Nothing else of TeX is needed.
set -euo pipefail
if command -v pdflatex >/dev/null; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends texlive-latex-base >/dev/null
