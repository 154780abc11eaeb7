#!/usr/bin/env bash
# Installs what the demo and the tests need on a Debian 12 host, run as root:
# the Debian packages for libvirt/QEMU/dnsmasq, and .venv with the pinned Python packages.
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base
  libvirt-dev pkg-config gcc tini genisoimage iptables
  python3-venv git shellcheck
  munge slurmctld slurmd slurm-client
  busybox-static cpio kmod debootstrap e2fsprogs openssl
  openssh-server
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "==> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "==> installing pinned Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
