#!/usr/bin/env bash
# Make this host ready for `make test-docker`: a Docker client and daemon, and debootstrap (for the base image
# deployments/base-image.sh makes when no registry is reachable). On Debian/Ubuntu as root it installs what is
# missing (apt-get install docker.io debootstrap) and starts dockerd (deployments/dockerd.sh); otherwise it says
# exactly what to install or run, and fails.
#   deployments/docker-host.sh        (make test-docker runs it first)
# SCENE_TEST_BASE_IMAGE set to another base (e.g. python:3.11-slim, pulled from a registry): debootstrap not needed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need=()
command -v docker >/dev/null || need+=(docker.io)
docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || need+=(docker.io)
if [ "${SCENE_TEST_BASE_IMAGE:-scene-base:bookworm}" = scene-base:bookworm ] && ! command -v debootstrap >/dev/null \
   && ! docker image inspect scene-base:bookworm >/dev/null 2>&1; then
  need+=(debootstrap)
fi
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u | sed '/^$/d')
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "docker-host.sh: missing ${need[*]}. Install them (Debian/Ubuntu, as root):" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${need[*]} iptables" >&2
    echo "  sudo deployments/dockerd.sh      # start the daemon, then: make test-docker" >&2
    echo "(other systems: Docker Engine from https://docs.docker.com/engine/install/, and debootstrap)" >&2
    exit 1
  fi
  echo "docker-host.sh: installing ${need[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}" iptables ca-certificates
fi
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "docker-host.sh: no Docker daemon answers and this user cannot start one: run 'sudo deployments/dockerd.sh'" \
         "(or add yourself to the docker group of a running daemon), then make test-docker" >&2
    exit 1
  fi
  "$here/dockerd.sh"
fi
echo "docker-host.sh: Docker $(docker info --format '{{.ServerVersion}} ({{.Driver}})') answers"
