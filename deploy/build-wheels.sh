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
build() {  # name version module
  if ls "$dir"/"${1//-/_}"-"$2"-*.whl >/dev/null 2>&1; then return 0; fi
  echo "dynalign set-up: building $1==$2 from source for $key (one time only, several minutes on 2 cores)..." >&2
  local start=$SECONDS tmp
  tmp=$(mktemp -d)
  MAX_JOBS=${MAX_JOBS:-$(nproc)} "$python" -m pip wheel -q --no-build-isolation --no-deps "$1==$2" -w "$tmp"
  mv "$tmp"/*.whl "$dir"/
  rm -rf "$tmp"
  echo "dynalign set-up: built $1 in $((SECONDS - start)) s into $dir" >&2
}
build torch-scatter 2.1.2
build torch-sparse 0.6.18
echo "$dir"
