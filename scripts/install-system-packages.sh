#!/usr/bin/env bash
# The system packages the widget tests need on Debian/Ubuntu: a virtual X display (Xvfb) and the libraries Qt 6
# loads. Works as root (containers, fresh cloud VMs, CI: no sudo there) and as a user with sudo.
set -euo pipefail
PACKAGES=(xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libgl1 libgl1-mesa-dri libegl1 libdbus-1-3
          libfontconfig1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-image0 libxcb-randr0 libxcb-render-util0
          libxcb-xinput0 libxcb-xfixes0 libxcb-shape0)
if [ "$(id -u)" -eq 0 ]; then
  AS_ROOT=()
elif command -v sudo >/dev/null 2>&1; then
  AS_ROOT=(sudo)
else
  echo "install-system-packages: run as root or install sudo; the packages are: ${PACKAGES[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${AS_ROOT[@]}" apt-get update -qq
"${AS_ROOT[@]}" apt-get install -y -qq "${PACKAGES[@]}" >/dev/null
