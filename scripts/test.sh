#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs the system packages the tests need
# (real SIP peers: SIPp, stunnel, Kamailio; real media peers: rtpengine, aiortc, Chromium; SDP peers: baresip) when missing, then formatting, lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# The opus crate builds its own libopus with cmake (watrunk sim plays and records Opus).
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v stunnel4 >/dev/null 2>&1 || need+=(stunnel4)
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || need+=(kamailio-tls-modules)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# Tests in a private network namespace change its firewall: a NAT (tests/pbx_bridge.rs), loss and
# an NFQUEUE for delay and reordering on the media path (tests/faults.rs).
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# Media interop: rtpengine as Meta's ICE-lite stand-in, tcpdump for who-sent-first, aiortc's libopus
# binding and numpy for the tone source and the frequency checks.
command -v rtpengine >/dev/null 2>&1 || need+=(rtpengine-daemon)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
/usr/bin/python3 -c 'import aiortc' >/dev/null 2>&1 || need+=(python3-aiortc)
/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1 || need+=(python3-numpy)
# SDP negotiator against live offers (tests/interop_sdp.rs, tests/peers/sdp): baresip, plus rtpengine, aiortc and
# Chromium (below).
command -v baresip >/dev/null 2>&1 || need+=(baresip baresip-core)
# Headless Chromium, driven over the DevTools protocol.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
/usr/bin/python3 -c 'import websockets' >/dev/null 2>&1 || need+=(python3-websockets)
# Debugging tools (tests/interop_calls.rs, tests/sim.rs): tshark reads `watrunk capture decrypt`'s
# output as RTP; sngrep is the HEP collector `--hep` is checked against.
command -v tshark >/dev/null 2>&1 || need+=(tshark)
command -v sngrep >/dev/null 2>&1 || need+=(sngrep)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # tshark asks whether non-root users may capture: no.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# Fuzzing (docs/fuzzing.md): each cargo-fuzz target for a short time; installs cargo-fuzz if missing.
scripts/fuzz.sh 15
