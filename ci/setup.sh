#!/usr/bin/env bash
# Bring a minimal Debian 12 machine to the point where the harness runs: Debian packages
# (QEMU, erofs-utils, kernel build dependencies, ccache, Python) and a virtualenv in .venv
# holding the harness. Safe to re-run: apt and pip skip what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(
  # the harness and the guest scripts (the guest runs the host's python3)
  python3 python3-venv python3-pip
  # booting: QEMU for virtme-ng, busybox for its init helpers, util-linux for mount/losetup
  qemu-system-x86 busybox-static util-linux kmod procps iproute2 udev
  # --transport ssh: the guest runs the host's sshd and ssh-keygen (the host's own sshd service is
  # kept from starting while they install: nothing of ours listens beyond 127.0.0.1)
  openssh-server openssh-client
  # the dataset and the guest's cache filesystem
  erofs-utils e2fsprogs
  # fetching and building the kernel
  apt-utils dpkg-dev xz-utils git gcc make flex bison bc libelf-dev libssl-dev cpio ccache
  # the C daemon (guest_scripts/cdaemon/, built by the harness and its unit tests with `cc`):
  # the C library's headers, and its libc.a for a static binary
  libc6-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  # no service starts at install (invoke-rc.d asks policy-rc.d; 101: not allowed), unless the
  # machine has its own policy already
  own_policy=""
  if [ -e /usr/sbin/policy-rc.d ]; then own_policy=1; else
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod 755 /usr/sbin/policy-rc.d
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ -z "$own_policy" ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi

# Debian's python3 on purpose: the guest sees the host's root, so the guest scripts run with it.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -e '.[test]'
echo "setup: ready ($(.venv/bin/failover-harness --version))"
