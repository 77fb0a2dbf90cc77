#!/usr/bin/env bash
# Fetch a patch series as an mbox for `failover-harness submit`:
#
#   bash ci/fetch-series.sh URL|MESSAGE-ID OUT.mbox
#
# A URL (e.g. https://lore.kernel.org/r/<message-id>/t.mbox.gz, gzipped or not) is downloaded;
# anything else is taken as a Message-ID and fetched with b4 (`b4 am`), which also picks the
# latest revision of the series and drops the replies.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 2 ] || [ -z "$1" ]; then
  echo "usage: $0 URL|MESSAGE-ID OUT.mbox" >&2
  exit 2
fi
what="$1"
out="$2"
python="${PYTHON:-.venv/bin/python}"

case "$what" in
  http://*|https://*)
    "$python" - "$what" "$out" <<'PY'
import gzip, sys, urllib.request
url, out = sys.argv[1], sys.argv[2]
with urllib.request.urlopen(url, timeout=120) as r:
    data = r.read()
if data[:2] == b"\x1f\x8b":  # lore serves t.mbox.gz
    data = gzip.decompress(data)
open(out, "wb").write(data)
PY
    ;;
  *)
    [ -x "$(dirname "$python")/b4" ] || "$python" -m pip install -q b4
    tmp="$(mktemp -d)"
    "$(dirname "$python")/b4" am --no-cover -o "$tmp" -n series "${what#<}" >&2
    mv "$tmp/series.mbx" "$out"
    rm -rf "$tmp"
    ;;
esac
grep -q '^Subject: ' "$out" || { echo "fetch-series: $what: no message in what was fetched" >&2; exit 2; }
echo "fetch-series: $(grep -c '^Subject: ' "$out") message(s) in $out"
