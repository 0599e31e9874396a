#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the project into it.
# Usage: scripts/setup_env.sh [extras]   e.g. "test" installs the test dependencies too.
#
# The install is skipped when nothing it depends on changed: a stamp in .venv records a hash of
# pyproject.toml, this script and the Python version, and the extras installed so far. A second
# start therefore costs nothing here; editing pyproject.toml (or asking for a new extra) installs
# again, and the extras installed before are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
python_bin="${PYTHON:-python3}"
stamp=.venv/.webui-api-install-stamp

say() { echo "setup_env: $*" >&2; }

# pip's progress, one line per package, without the "already satisfied" noise of a re-install.
pip_progress() {
  grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed)' || true
}

merge_extras() {  # "a,b" "b,c" -> "a,b,c" (sorted, unique, empty parts dropped)
  printf '%s\n' "$1" "$2" | tr ',' '\n' | sed '/^$/d' | sort -u | paste -sd, -
}

requested="$(merge_extras "${1:-}" "")"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $("$python_bin" --version)"
  "$python_bin" -m venv .venv
fi
fingerprint="$(cat pyproject.toml scripts/setup_env.sh <(.venv/bin/python --version 2>&1) | sha256sum | cut -d' ' -f1)"
installed=""
if [ -f "$stamp" ] && [ "$(sed -n 1p "$stamp")" = "$fingerprint" ]; then
  installed="$(sed -n 2p "$stamp")"
  if [ "$(merge_extras "$installed" "$requested")" = "$installed" ]; then
    exit 0  # up to date: nothing to install
  fi
elif [ -f "$stamp" ]; then
  installed="$(sed -n 2p "$stamp")"  # keep what was installed before, at the new versions
fi
extras="$(merge_extras "$installed" "$requested")"

say "installing webui-api${extras:+ with extras [$extras]} into .venv"
say "(a fresh .venv downloads about 3 GB, mostly torch and CUDA libraries: a few minutes; later starts skip this)"
rm -f "$stamp"
.venv/bin/python -m pip install --quiet --upgrade pip
spec="."
if [ -n "$extras" ]; then spec=".[$extras]"; fi
# setuptools' "Editable installation ... folders with the same name" banner is about running from
# the checkout, which is what this project does on purpose.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --progress-bar off -e "$spec" | pip_progress
if [[ ",$extras," == *",test,"* ]]; then
  # The sampler parity tests read k-diffusion's sampling.py; its declared dependencies (wandb,
  # clean-fid, clip, ...) serve training only and would pin numpy<2, so they are left out.
  .venv/bin/python -m pip install --progress-bar off --no-deps "k-diffusion==0.1.1.post1" | pip_progress
fi
printf '%s\n%s\n' "$fingerprint" "$extras" > "$stamp"
say "done"
