#!/usr/bin/env bash
# `make image`: builds the Dockerfile with scripts/container-engine (Docker, else podman) and tags it IMAGE.
# BASE: the Dockerfile's base; by default scripts/make-base-image.sh's answer (python:3.11-slim, or a base
# debootstrapped here where that cannot be pulled). The host's CA bundle is lent to the pip step as the build
# secret `host-ca` (the package index may sit behind a TLS proxy only the host trusts); it is never in a layer.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=scripts/container-engine
image="${IMAGE:-musicgen-local}"
base="${BASE:-$(scripts/make-base-image.sh)}"
ca="${HOST_CA:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
args=(build -t "$image" --build-arg "BASE=$base")
[ -s "$ca" ] && args+=(--secret "id=host-ca,src=$ca")
# podman writes OCI images by default, which have no HEALTHCHECK; Docker's format keeps it.
[ "$($engine --which)" = podman ] && args+=(--format docker)
echo "make image: $($engine --which) build, base $base" >&2
start=$SECONDS
$engine "${args[@]}" .
size=$($engine image inspect --format '{{.Size}}' "$image")
echo "make image: $image built in $((SECONDS - start)) s, $((size / 1000000)) MB" >&2
