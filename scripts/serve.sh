#!/usr/bin/env bash
# Runs `watrunk serve` on a fresh Debian machine: installs what the build needs when missing (cmake:
# the opus crate builds libopus for `watrunk sim`), builds the release binary and starts it with the
# arguments given, e.g.  scripts/serve.sh --hostname sip.example.com
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null 2>&1; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cmake
fi
exec cargo run --release --locked -p watrunk -- serve "$@"
