#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the project into it.
# Usage: scripts/setup_env.sh [extra]   e.g. "test" installs the test dependencies too.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
if [ -n "${1:-}" ]; then spec=".[$1]"; fi
.venv/bin/python -m pip install --quiet -e "$spec"
if [[ ",${1:-}," == *",test,"* ]]; then
  # The sampler parity tests read k-diffusion's sampling.py; its declared dependencies (wandb,
  # clean-fid, clip, ...) serve training only and would pin numpy<2, so they are left out.
  .venv/bin/python -m pip install --quiet --no-deps "k-diffusion==0.1.1.post1"
fi
