# The image a GPU box runs: the Replicate v1 API by default, Cog's HTTP server with another command.
#   docker build -t musicgen-local .
#   docker run --gpus all -p 5000:5000 -v musicgen-weights:/weights -v musicgen-data:/data musicgen-local
# (`make image` builds it with Docker or podman, on a base made here when python:3.11-slim cannot be pulled.)
# The pinned packages are `make install`'s (requirements.txt, cog, audiocraft --no-deps); torch's CUDA 12.8 wheels
# bring the CUDA runtime, and the NVIDIA container toolkit brings the host's driver. cog.yaml is the other way to
# build it (`cog build`/`cog push`); the README says which does what.
#
# Layer order: system packages, the pinned requirements (8+ GB, rebuilt only when requirements*.txt change), the CPU
# kernel, then the package's source, so that editing the source rebuilds only the last small layers. One stage:
# copying the 8 GB environment out of a build stage cost minutes and its size again in disk; the compiler lives and
# dies inside the kernel's step instead, so no layer holds it.

# Any Debian-based image with Python 3.11 as `python3` and its venv module.
ARG BASE=python:3.11-slim
FROM ${BASE}

# Every system package the image runs with, in one place. ffmpeg: audiocraft's audio_write pipes PCM through its
# CLI (wav too). rubberband-cli: the looper's time stretch (GPL, run as a separate program). tini: PID 1, so that
# `docker stop`'s SIGTERM reaches the server, which then drains.
ARG APT_PACKAGES="ffmpeg rubberband-cli tini"
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${APT_PACKAGES} \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/musicgen --shell /usr/sbin/nologin musicgen \
 && install -d -o musicgen -g musicgen /weights /data

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/src \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MUSICGEN_WEIGHTS=/weights \
    MUSICGEN_DATA=/data \
    NUMBA_CACHE_DIR=/tmp/numba \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /src

# A machine whose package index sits behind a TLS proxy lends the build its CA bundle as the secret `host-ca`
# (`--secret id=host-ca,src=/etc/ssl/certs/ca-certificates.crt`; `make image` does): mounted for the step only.
# cog is the pin requirements-dev.txt gives `make install` (cog build brings its own, so requirements.txt has none).
COPY requirements.txt requirements-dev.txt /src/
RUN --mount=type=secret,id=host-ca \
    if [ -s /run/secrets/host-ca ]; then export PIP_CERT=/run/secrets/host-ca; fi \
 && python3 -m venv /opt/venv \
 && pip install -r requirements.txt "$(grep -E '^cog==' requirements-dev.txt)" \
 && pip install --no-deps audiocraft==1.3.0

# The fast decoder's CPU kernel, built as `make install` builds it (build.py names the library after its sources
# and torch's version; the server loads it from _build/ with no compiler). g++ and ninja (requirements-dev.txt's
# pin) are installed, used and removed in this one step; only the library stays.
COPY musicgen_local/engine/fast/build.py musicgen_local/engine/fast/*.cpp musicgen_local/engine/fast/*.h \
     /src/musicgen_local/engine/fast/
RUN --mount=type=secret,id=host-ca \
    if [ -s /run/secrets/host-ca ]; then export PIP_CERT=/run/secrets/host-ca; fi \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ \
 && pip install --target /tmp/ninja "$(grep -E '^ninja==' requirements-dev.txt)" \
 && PATH=/tmp/ninja/bin:$PATH python musicgen_local/engine/fast/build.py \
 && find musicgen_local/engine/fast/_build -type f ! -name '*.so' -delete \
 && DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove g++ \
    -o APT::AutoRemove::RecommendsImportant=false -o APT::AutoRemove::SuggestsImportant=false \
 && rm -rf /tmp/ninja /root/.cache /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
    /var/log/apt /var/log/dpkg.log

COPY predict.py predict_looper.py train.py /src/
COPY musicgen_local /src/musicgen_local
# The source's bytecode, the `musicgen-local` command (the tree is run in place, not installed), and the schema
# Cog's server reads from .cog/ (what `cog build` writes): predict.py's, which `musicgen-local cog-serve` keeps
# when it is current; `cog-serve --looper` writes the looper's there instead, so .cog/ is the user's.
RUN python -m compileall -q musicgen_local predict.py predict_looper.py train.py \
 && printf '#!/bin/sh\nexec python -m musicgen_local "$@"\n' >/opt/venv/bin/musicgen-local \
 && chmod 755 /opt/venv/bin/musicgen-local \
 && python -c "from musicgen_local.cli import write_cog_schema; write_cog_schema()" \
 && chown -R musicgen:musicgen .cog

USER musicgen
VOLUME ["/weights", "/data"]
EXPOSE 5000
# READY (v1 API) or READY/BUSY (Cog's server) on /health-check; loading and warming models can take minutes.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10m --retries=3 CMD python -c "import json, sys, \
urllib.request as u; s = json.load(u.urlopen('http://127.0.0.1:5000/health-check', timeout=8))['status']; \
sys.exit(s not in ('READY', 'BUSY'))"
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "musicgen_local", "serve", "--host", "0.0.0.0", "--port", "5000"]
