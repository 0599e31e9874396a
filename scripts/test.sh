#!/usr/bin/env bash
# One command to run the tests on a fresh machine: sets up .venv with the test extra, runs pytest.
# Extra arguments go to pytest (e.g. -m slow for the slow set, or a test path).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh test,controlnet,codeformer,ray  # optional parts (ControlNet preprocessors, CodeFormer, Ray Serve) get tested too
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q "$@"
