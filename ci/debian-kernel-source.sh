#!/usr/bin/env bash
# On a runner that is not Debian 12 (GitHub's are Ubuntu), make Debian's kernel source package
# downloadable (`apt-get download linux-source-6.12`, what the harness does by default) without
# letting Debian's archive replace anything: its suite is added with pin priority 1, so apt
# takes from it only what no other source has. On Debian 12 itself there is nothing to do.
set -euo pipefail
package="${1:-linux-source-6.12}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if apt-cache policy "$package" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  echo "debian-kernel-source: $package is available"
  exit 0
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debian-archive-keyring
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main" \
  | $SUDO tee /etc/apt/sources.list.d/failover-harness-debian.list >/dev/null
printf 'Package: *\nPin: release n=bookworm-security\nPin-Priority: 1\n' \
  | $SUDO tee /etc/apt/preferences.d/failover-harness-debian >/dev/null
$SUDO apt-get update -q
apt-cache policy "$package" | grep -q 'Candidate: [0-9]' || { echo "debian-kernel-source: $package still not found" >&2; exit 2; }
echo "debian-kernel-source: $package from Debian's bookworm-security"
