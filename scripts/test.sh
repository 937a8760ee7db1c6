#!/usr/bin/env bash
# Lint, type-check and run every test (the slow ones start real llama-server replicas).
set -euo pipefail
cd "$(dirname "$0")/.."
UV=(uv); command -v uv >/dev/null 2>&1 || UV=(python3 -m uv)
echo "==> ruff" >&2
"${UV[@]}" run --frozen ruff check src tests bench
"${UV[@]}" run --frozen ruff format --check src tests bench
echo "==> mypy" >&2
"${UV[@]}" run --frozen mypy
echo "==> pytest" >&2
"${UV[@]}" run --frozen pytest "$@"
