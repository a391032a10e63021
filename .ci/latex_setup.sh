#!/usr/bin/env bash
# Install Debian's texlive-latex-base for tests/test_report_macros.py, which compiles a document that inputs a
# report's macros.tex with `pdflatex -interaction=nonstopmode -halt-on-error`. Nothing else of TeX is needed.
exec bash "$(dirname "$0")/apt_install.sh" pdflatex texlive-latex-base
