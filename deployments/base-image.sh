#!/usr/bin/env bash
# A Python 3.11 base image from Debian packages, for hosts that can reach apt but no image registry:
#   sudo deployments/base-image.sh [TAG]        (default TAG: scene-base:bookworm)
# then build the worker image on it: docker build --build-arg BASE_IMAGE=scene-base:bookworm -f deployments/Dockerfile .
# Where a registry is reachable, skip this and pass BASE_IMAGE=python:3.11-slim (or a CUDA base) instead.
# The host's CA bundle replaces Debian's in the image, so pip inside builds and containers trusts the same
# certificates as the host (needed behind a TLS-inspecting proxy; certificates are public, not secrets).
set -euo pipefail
TAG=${1:-scene-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if docker image inspect "$TAG" >/dev/null 2>&1 && [ -z "${FORCE:-}" ]; then
  echo "$TAG exists (FORCE=1 rebuilds)"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "base-image.sh: debootstrap needs root; run it with sudo" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "base-image.sh: install debootstrap (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d /var/tmp/scene-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$root" "$MIRROR"
[ -f "$CA" ] && cp "$CA" "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  -c 'CMD ["/bin/bash"]' - "$TAG"
echo "built $TAG"
