#!/usr/bin/env bash
# Install Debian's chromium for tests/test_report_html.py, which opens report.html in a headless browser and counts
# the images it decoded. Nothing is started here; the test runs `chromium --headless` itself.
exec bash "$(dirname "$0")/apt_install.sh" chromium chromium
