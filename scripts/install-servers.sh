#!/usr/bin/env bash
# Install the database servers dfdb's server drivers talk to (Debian packages) and the
# Python client libraries (dfdb's extras, in the virtual environment .venv, created with
# python3 -m venv when missing). Nothing is started: the test fixtures and
# `dfdb server run BACKEND` start servers on loopback themselves.
#
# Usage: scripts/install-servers.sh [BACKEND…]   (default: every backend with a driver)
set -euo pipefail
cd "$(dirname "$0")/.."

# backend -> Debian packages
declare -A PACKAGES=(
  [redis]="redis-server"
  [etcd]="etcd-server etcd-client"
  [zookeeper]="zookeeper"
)
# The backends whose drivers exist in this version of dfdb.
AVAILABLE=()
for backend in redis etcd zookeeper; do
  module=$backend
  [[ -f "src/dfdb/drivers/${module}.py" ]] && AVAILABLE+=("$backend")
done

wanted=("$@")
[[ ${#wanted[@]} -eq 0 ]] && wanted=("${AVAILABLE[@]}")

debs=()
for backend in "${wanted[@]}"; do
  [[ -n "${PACKAGES[$backend]:-}" ]] || { echo "unknown backend: $backend (known: ${!PACKAGES[*]})" >&2; exit 2; }
  read -r -a pkgs <<<"${PACKAGES[$backend]}"
  debs+=("${pkgs[@]}")
done

if [[ ${#debs[@]} -gt 0 ]]; then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${debs[@]}"
else
  echo "no server backend to install yet"
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install --quiet -e ".[all]"
