#!/usr/bin/env bash
# The lint and type gates CI runs before the tests: ruff (style, imports, bug patterns) and mypy
# (configured in pyproject.toml). Sets up .venv like scripts/test.sh; fails on any finding.
set -euo pipefail
cd "$(dirname "$0")/.."
# optional architectures (ControlNet preprocessors, CodeFormer) too, so they are checked and tested
bash scripts/setup_env.sh test,controlnet,codeformer
echo "check: ruff check ." >&2
.venv/bin/ruff check .
echo "check: mypy (first run about 2 CPU-minutes; later runs reuse .mypy_cache)" >&2
.venv/bin/mypy
