#!/usr/bin/env bash
# Start a Docker daemon when none answers (as root):
#   deployments/dockerd.sh [LOG]      (default LOG: /var/log/scene-dockerd.log)
# dockerd picks its storage driver (overlay2 where the kernel and filesystem allow it). Set
# DOCKER_STORAGE_DRIVER=vfs where overlay2 fails (e.g. /var/lib/docker on overlayfs): vfs works anywhere but
# copies the whole image for every layer and every container (measured here: minutes per container).
set -euo pipefail
LOG=${1:-/var/log/scene-dockerd.log}
if docker info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null || { echo "dockerd.sh: no dockerd; install Docker (apt-get install docker.io)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "dockerd.sh: no Docker daemon answers and starting one needs root" >&2; exit 1; }
nohup dockerd ${DOCKER_STORAGE_DRIVER:+--storage-driver="$DOCKER_STORAGE_DRIVER"} >>"$LOG" 2>&1 &
for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && { echo "dockerd started (log: $LOG)"; exit 0; }; sleep 1; done
echo "dockerd.sh: dockerd did not answer within 60 s; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1
