#!/usr/bin/env bash
# The test suite: mypy --strict over harness/ (pyproject's [tool.mypy]; seconds), then the unit
# tests (no VM) first, they take seconds; then the VM tests, which build the kernel (cached
# after the first time) and boot it. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
