#!/usr/bin/env bash
# `make image` needs a container engine. Where a Docker daemon answers, that is it. Where none does (a `docker`
# client without a daemon, as on CI), Debian's podman and runc are installed; scripts/container-engine runs podman
# with scripts/podman/containers.conf, the settings without which podman fails on such a machine.
set -e
command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && exit 0
[ "${CONTAINER_ENGINE:-podman}" = podman ] || exit 0
command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "No Docker daemon answers: installing podman and runc (Debian packages)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
else
  echo "make image needs Docker (with its daemon running) or podman and runc:" \
       "e.g. 'sudo apt-get install podman runc'." >&2
  exit 1
fi
