#!/usr/bin/env bash
# Installs the Debian packages tenantkms needs to build and test (source it, then call tkms_install_deps).

TKMS_DEBIAN_PACKAGES=(
  meson ninja-build pkg-config gcc libc6-dev libssl-dev openssl libp11-dev
  softhsm2 libsofthsm2-dev opensc libevent-dev protobuf-c-compiler
  libprotobuf-c-dev libjansson-dev check libsqlite3-dev zlib1g-dev sqlite3 clang libclang-rt-14-dev
)

# tkms_install_deps: install only the packages from TKMS_DEBIAN_PACKAGES that are missing.
# Quiet when everything is already installed.
tkms_install_deps() {
  local pkg status
  local -a missing=() sudo=()

  for pkg in "${TKMS_DEBIAN_PACKAGES[@]}"; do
    # dpkg -s also succeeds for removed-but-not-purged packages: check the Status line.
    status=$(dpkg -s "$pkg" 2>/dev/null || true)
    if [[ "$status" != *$'\nStatus: install ok installed'* && "$status" != 'Status: install ok installed'* ]]; then
      missing+=("$pkg")
    fi
  done
  ((${#missing[@]} == 0)) && return 0

  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "deps: missing packages (${missing[*]}) and not root, no sudo" >&2
      return 1
    fi
  fi

  echo "deps: installing ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Run directly: install and exit.
if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
  set -euo pipefail
  tkms_install_deps
fi
