#!/usr/bin/env bash
# Install a headless browser for tests/test_report_browser.py: Debian's chromium + chromium-driver.
#
# Runs apt-get only when chromium is missing, we are root and apt-get exists; otherwise it prints
# why it did nothing and exits 0 — the browser test then skips with that reason (never fails the
# test command because no browser could be installed).
set -u

have_browser() {
  for b in chromium chromium-browser google-chrome google-chrome-stable; do
    command -v "$b" >/dev/null 2>&1 && { echo "$b"; return 0; }
  done
  return 1
}

if b=$(have_browser); then
  echo "install_test_browser: $b already installed ($(command -v "$b")); nothing to do"
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "install_test_browser: chromium is missing and this is not root; the browser test will be skipped" \
       "(install it with: sudo apt-get install -y chromium chromium-driver)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_test_browser: chromium is missing and apt-get is not available; the browser test will be skipped"
  exit 0
fi
echo "install_test_browser: installing chromium and chromium-driver with apt-get"
export DEBIAN_FRONTEND=noninteractive
if apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; then
  echo "install_test_browser: installed $(chromium --version 2>/dev/null || echo chromium)"
else
  echo "install_test_browser: apt-get failed (exit $?); the browser test will be skipped"
fi
exit 0
