#!/usr/bin/env bash
# Prints the base image `make image` builds on (the Dockerfile's BASE argument): the default base, a slim Python
# image, where the engine has it or can pull it; else a Debian bookworm made here with debootstrap, with Python 3.11
# (bookworm's python3) and venv, imported as LOCAL_BASE. A second run finds one of them and takes a second.
# Usage: scripts/make-base-image.sh [DEFAULT_BASE]   (messages go to stderr, the image's name to stdout)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
engine="$here/container-engine"
default_base="${1:-python:3.11-slim}"
local_base="${LOCAL_BASE:-localhost/musicgen-local-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

has() { "$engine" image inspect "$1" >/dev/null 2>&1; }

if has "$default_base"; then echo "$default_base"; exit 0; fi
if has "$local_base"; then echo "$local_base"; exit 0; fi
if timeout 300 "$engine" pull "$default_base" >&2; then echo "$default_base"; exit 0; fi

echo "make image: $default_base cannot be pulled; making $local_base with debootstrap instead..." >&2
if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; } >&2
  else
    echo "make image: install debootstrap (e.g. 'sudo apt-get install debootstrap'), or pass BASE=<an image you have>." >&2
    exit 1
  fi
fi
root="$(mktemp -d /var/tmp/musicgen-base.XXXXXX)"
trap 'rm -rf "$root" "$root.log"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
  { tail -40 "$root.log" >&2; echo "make image: debootstrap failed (above)." >&2; exit 1; }
# The same suites a Debian image lists, so that the Dockerfile's apt-get gets security fixes.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*
tar -C "$root" -c . | "$engine" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$local_base" >&2
echo "$local_base"
