#!/usr/bin/env bash
# audiocraft's audio_write pipes PCM through the ffmpeg CLI (wav too), so ffmpeg is required.
set -e
command -v ffmpeg >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing ffmpeg (Debian package)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null
else
  echo "ffmpeg is required but missing. Install it with your package manager, e.g. 'sudo apt-get install ffmpeg'." >&2
  exit 1
fi
