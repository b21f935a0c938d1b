#!/usr/bin/env bash
# How long installing requirements.lock into a fresh venv takes with pip and with uv, each with an empty cache
# (what a clean CI machine does), alternating ROUNDS times in one run:
#     benchmarks/install.sh [ROUNDS]      (default 1; ~4 min per round on a 2-core machine)
# Prints one line per install: tool, round, wall seconds, CPU seconds. make install uses uv, pip when uv fails.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
lock=requirements.lock
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
uv_pin=$(grep -m1 '^uv==' "$lock")
for round in $(seq "$rounds"); do
  for tool in pip uv; do
    venv=$tmp/venv-$tool-$round
    python3 -m venv "$venv"
    export PIP_CACHE_DIR=$tmp/pip-cache-$tool-$round UV_CACHE_DIR=$tmp/uv-cache-$tool-$round
    start=$(date +%s.%N)
    cpu0=$(awk '{print $14+$15+$16+$17}' /proc/$$/stat)
    if [ "$tool" = pip ]; then
      "$venv/bin/pip" install -q -r "$lock" 2>/dev/null
    else
      "$venv/bin/pip" install -q "$uv_pin" 2>/dev/null
      "$venv/bin/uv" pip install -q --python "$venv/bin/python" -r "$lock"
    fi
    cpu1=$(awk '{print $14+$15+$16+$17}' /proc/$$/stat)
    end=$(date +%s.%N)
    printf '%s\tround %s\twall %.0f s\tcpu %.0f s\n' "$tool" "$round" "$(echo "$end - $start" | bc)" \
      "$(echo "($cpu1 - $cpu0) / $(getconf CLK_TCK)" | bc -l)"
    rm -rf "$venv" "$PIP_CACHE_DIR" "$UV_CACHE_DIR"
  done
done
