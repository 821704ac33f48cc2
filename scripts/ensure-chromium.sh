#!/usr/bin/env bash
# The playground's browser tests (tests/e2e/test_playground.py) drive Debian's chromium through
# chromedriver; a browser build cannot be downloaded at test time. Without them those tests skip.
set -e
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing chromium and chromium-driver (Debian packages) for the browser tests..."
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
    echo "Could not install chromium: the playground's browser tests will be skipped." >&2
else
  echo "chromium/chromedriver not found: the playground's browser tests will be skipped" \
       "(install them with e.g. 'sudo apt-get install chromium chromium-driver')." >&2
fi
