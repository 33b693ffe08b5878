#!/usr/bin/env bash
# Builds torch-scatter and torch-sparse once into a wheel cache outside the repository.
# They have no wheels for this torch on PyPI and take ~20 min to compile on 2 cores, so every later install
# (a new venv, a fresh clone, CI on the same machine) reuses the cached wheels in seconds.
# Usage: deploy/build-wheels.sh PYTHON [CACHE_ROOT]; prints the cache directory it filled on its last line.
set -euo pipefail
python=${1:?usage: build-wheels.sh PYTHON [CACHE_ROOT]}
root=${2:-${DYNALIGN_WHEEL_CACHE:-$HOME/.cache/dynalign/wheels}}
key=$("$python" -c "import sys, torch; v = torch.__version__.split('+')[0]; print(f'torch-{v}-cp{sys.version_info[0]}{sys.version_info[1]}')")
dir="$root/$key"
mkdir -p "$dir"
# No debug info: Python's own CFLAGS carry -g, and both packages link with -s, so the symbols were generated only
# to be stripped (-g0 took 26% less compiler CPU time per file, 57 -> 42 s; docs/benchmarks.md, Set-up).
export CFLAGS="${CFLAGS:-} -g0" CXXFLAGS="${CXXFLAGS:-} -g0"
build() {  # name version minutes-on-2-cores
  if ls "$dir"/"${1//-/_}"-"$2"-*.whl >/dev/null 2>&1; then return 0; fi
  echo "dynalign set-up: compiling $1==$2 for $key, one time only (about $3 min on 2 cores; cached in $dir)" >&2
  local start=$SECONDS tmp pid
  tmp=$(mktemp -d)
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$python" -m pip wheel -q --no-build-isolation --no-deps "$1==$2" -w "$tmp" &
  pid=$!
  while ! wait_for "$pid" 60; do
    echo "dynalign set-up: still compiling $1: $(( (SECONDS - start) / 60 )) min so far, about $3 in all" >&2
  done
  wait "$pid" || { echo "dynalign set-up: compiling $1 failed (output above)" >&2; rm -rf "$tmp"; exit 1; }
  mv "$tmp"/*.whl "$dir"/
  rm -rf "$tmp"
  echo "dynalign set-up: built $1 in $((SECONDS - start)) s into $dir" >&2
}
wait_for() {  # pid seconds: true once the process ended, false if it still runs after that long
  local i
  for ((i = 0; i < $2; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 1; done
  ! kill -0 "$1" 2>/dev/null
}
build torch-scatter 2.1.2 7
build torch-sparse 0.6.18 11
echo "$dir"
