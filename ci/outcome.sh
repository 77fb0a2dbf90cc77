#!/usr/bin/env bash
# Map the harness's exit code to the CI job's outcome.
#
#   bash ci/outcome.sh github|gitlab CODE
#
# 0 PASS and 1 FAIL pass and fail the job. 125 (untestable or inconclusive: the build or boot
# failed, or a failover path never ran) is neither, and must not look like either: GitHub has
# no neutral outcome for a job, so the job passes with a warning annotation that says so;
# GitLab marks the job with its own warning state through `allow_failure: exit_codes: [125]`,
# so the code is passed through. 2 (bad usage: the CI set-up is wrong) and anything else
# (130: interrupted) fail the job.
set -euo pipefail

platform="${1:-}"
code="${2:-}"
if [[ "$platform" != github && "$platform" != gitlab ]] || ! [[ "$code" =~ ^[0-9]+$ ]]; then
  echo "usage: $0 github|gitlab EXIT_CODE" >&2
  exit 2
fi

case "$code" in
  0)   title=PASS;       level=notice;  message="the kernel survived every failover scenario" ;;
  1)   title=FAIL;       level=error;   message="the kernel failed: see the job summary and the runs artifact" ;;
  125) title=UNTESTABLE; level=warning; message="untestable or inconclusive: not a verdict on the kernel (build or boot failed, or a failover path never ran)" ;;
  2)   title=ERROR;      level=error;   message="bad usage or input: the CI configuration needs fixing" ;;
  *)   title="EXIT $code"; level=error; message="the harness ended unexpectedly (exit $code)" ;;
esac

if [ "$platform" = github ]; then
  echo "::${level} title=${title}::${message}"
  [ "$code" = 125 ] && exit 0
  exit "$code"
fi
echo "${title}: ${message}"
exit "$code"
