#!/usr/bin/env bash
# The looper stretches each loop to the requested tempo with Rubber Band's command-line tool. Rubber Band is
# GPL: it runs as a separate program (Debian's rubberband-cli), never linked into this MIT package.
set -e
command -v rubberband >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing rubberband-cli (Debian package)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rubberband-cli >/dev/null
else
  echo "rubberband is required for the looper but missing. Install it with your package manager," \
    "e.g. 'sudo apt-get install rubberband-cli'." >&2
  exit 1
fi
