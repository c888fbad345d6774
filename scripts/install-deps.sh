#!/usr/bin/env bash
# Installs the Debian 12 packages this project builds, tests and benchmarks with.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build clang libclang-rt-14-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libabsl-dev libboost-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  iproute2 nftables sockperf iperf3 gnuplot-nox jq
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler pkgconf
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
