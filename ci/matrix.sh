#!/usr/bin/env bash
# One shard of the CI matrix, the same for every CI system:
#
#   bash ci/matrix.sh I/N [--list] [other `failover-harness matrix` options]
#
# The axes come from the environment, space-separated, as the CI templates set them:
#   KERNELS    Debian packages, tree:PATH or tree:PATH@REF    (default linux-source-6.12)
#   FLAVORS    plain, debug                                   (default plain)
#   SCENARIOS  see harness/scenarios.py                       (default: the failover scenarios)
#   RUN_OPTIONS  options for every run, e.g. "--seed 2 --accel kvm"
#   OUTPUT     where the runs, junit.xml and report.md go     (default runs)
#   PYTHON     the harness's interpreter                      (default .venv/bin/python)
# Exit code: the worst of the shard's runs (0 PASS, 1 FAIL, 2 bad usage, 125 untestable).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ]; then
  echo "usage: $0 I/N [matrix options]" >&2
  exit 2
fi
shard="$1"
shift

args=(matrix --shard "$shard" --output "${OUTPUT:-runs}")
for kernel in ${KERNELS:-}; do args+=(--kernel "$kernel"); done
for flavor in ${FLAVORS:-}; do args+=(--flavor "$flavor"); done
for scenario in ${SCENARIOS:-}; do args+=(--scenario "$scenario"); done
# word splitting on purpose: RUN_OPTIONS is a list of options in one variable
# shellcheck disable=SC2206
run_options=(${RUN_OPTIONS:-})

exec "${PYTHON:-.venv/bin/python}" -m harness.cli "${args[@]}" "$@" -- "${run_options[@]}"
