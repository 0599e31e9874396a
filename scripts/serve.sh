#!/usr/bin/env bash
# One command to run the server on a fresh machine: sets up .venv, then starts the API.
# Any A1111 flags may follow, e.g. scripts/serve.sh --nowebui --listen --api-auth user:pass
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh "${WEBUI_API_EXTRAS:-}"  # e.g. WEBUI_API_EXTRAS=controlnet,codeformer
exec .venv/bin/python launch.py --api "$@"
