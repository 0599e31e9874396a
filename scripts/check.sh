#!/usr/bin/env bash
# The lint and type gates CI runs before the tests: ruff (style, imports, bug patterns) and mypy
# (both configured in pyproject.toml). Sets up .venv like scripts/test.sh; runs both gates, so
# one run shows every finding, and fails if either finds anything.
set -euo pipefail
cd "$(dirname "$0")/.."
# optional parts (ControlNet preprocessors, CodeFormer, Ray Serve) too, so they are checked and tested
bash scripts/setup_env.sh test,controlnet,codeformer,ray
failed=0
echo "check: ruff check ." >&2
.venv/bin/python -m ruff check . || failed=1
echo "check: mypy (first run about 2 CPU-minutes; later runs reuse .mypy_cache)" >&2
.venv/bin/python -m mypy || failed=1
if [ "$failed" -ne 0 ]; then
  echo "check: FAILED (fix the findings above; '.venv/bin/ruff check --fix .' fixes many of ruff's," >&2
  echo "  '.venv/bin/python scripts/wrap_long_lines.py' wraps the lines over 120 columns)" >&2
fi
exit "$failed"
