#!/usr/bin/env bash
# One command to run the tests on a fresh machine: sets up .venv with the test extra, runs the
# lint and type gates (scripts/check.sh), then pytest.
# Extra arguments go to pytest (e.g. -m slow for the slow set, or a test path).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/check.sh  # sets up .venv (test extra and the optional parts) first
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
echo "test: pytest (the fast set unless arguments say otherwise)" >&2
exec .venv/bin/python -m pytest -q "$@"
