#!/usr/bin/env bash
# Where a call's set-up CPU goes in `watrunk serve` (docs/benchmarks.md, "a call's set-up, phase by
# phase"): `watrunk sim load` places TOTAL users' calls (TLS, INVITE, 407, INVITE, 200, ACK, ICE-lite,
# DTLS, 0.2 s of media, BYE) at RATE per second while `perf` samples serve with call stacks; each
# sample is put in the first phase whose frames it carries, and the phases are printed with their
# share and the CPU per call that share stands for. Runs in a private network namespace, as root.
#   scripts/profile-setup.sh [RATE] [TOTAL]   (needs linux-perf; builds watrunk --release unless
#                                             WATRUNK_BIN names the binary to profile)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${WATRUNK_PROFILE_NETNS:-}" ]; then
  command -v perf >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; }
  [ -n "${WATRUNK_BIN:-}" ] || cargo build --release --locked -p watrunk
  exec unshare -n env WATRUNK_PROFILE_NETNS=1 bash "$0" "$@"
fi
RATE=${1:-200}
TOTAL=${2:-600}
ip link set lo up
ip addr add 198.18.0.1/32 dev lo
ulimit -n 20000 2>/dev/null || true
IP=198.18.0.1
W=${WATRUNK_BIN:-$root/target/release/watrunk}
out=$root/target/bench/profile-setup
rm -rf "$out" && mkdir -p "$out"
echo secret > "$out/pw"
printf '[limits]\nmax_connections_per_source = 100000\nmax_transactions_per_source = 100000\n' > "$out/bench.toml"
"$W" serve --hostname localhost --tls $IP:5061 --state-dir "$out/state" --config "$out/bench.toml" \
  --number +15550001111 --sip-password-file "$out/pw" --challenge --digest-algorithm both \
  --srtp dtls --media-ip $IP --sink $IP:4100 > "$out/serve.out" 2> "$out/serve.err" &
serve=$!
trap 'kill $serve 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -f "$out/state/localhost.selfsigned.crt" ] && break; sleep 0.1; done
sleep 0.5
perf record -F 997 --call-graph dwarf,32768 -o "$out/perf.data" -p $serve 2> "$out/perf.err" &
perf=$!
"$W" sim load --through watrunk --media-ip $IP --sink $IP:4100 --target $IP:5061 --server-name localhost \
  --ca "$out/state/localhost.selfsigned.crt" --password-file "$out/pw" --srtp dtls --calls "$TOTAL" \
  --total "$TOTAL" --rate "$RATE" --hold 0.2 --pid $serve 2> "$out/load.err" | tail -n 1 > "$out/load.json"
kill -INT $perf; wait $perf || true
perf script -i "$out/perf.data" -F comm,tid,ip,sym,dso 2>/dev/null > "$out/stacks.txt"
python3 - "$out/load.json" "$out/stacks.txt" <<'PY'
import collections, json, re, sys
load = json.load(open(sys.argv[1]))
per_call = load["run"]["relay_cpu_ms_per_call"]
print(f"calls {load['established']} of {load['total']}, failed {load['failed']}; serve's CPU per call "
      f"(perf running) {per_call} ms")
# First match wins: the specific phases before the layers that call them.
phases = [
    ("digest", r"watrunk_sip::digest|sha2::|md5::"),
    ("SDP", r"watrunk_sdp::"),
    ("DTLS", r"dtls::|rcgen::"),
    ("TLS (the SIP connection)", r"rustls::|tokio_rustls"),
    ("ICE (webrtc-ice agent, STUN, consent)", r"webrtc_ice::|stun::|watrunk_media::(ice|consent|lite)"),
    ("media packets (relay, SRTP, outbound)", r"watrunk_media::(mux::read_loop|relay|outbound|srtp|quiet)"),
    ("media session set-up and end", r"watrunk_media::"),
    ("SIP parse and print", r"watrunk_sip::(message|header|values|uri|framing)"),
    ("SIP transactions, dialogs, transport", r"watrunk_sip::"),
    ("invite sessions", r"watrunk_call::"),
    ("server core (calls, events, API)", r"watrunk::"),
    ("tokio (scheduling, timers, I/O driver)", r"tokio::"),
]
compiled = [(name, re.compile(p)) for name, p in phases]
counts, kernel, total, stack = collections.Counter(), collections.Counter(), 0, []
def flush():
    global total
    if not stack:
        return
    total += 1
    text = "\n".join(stack)
    name = next((n for n, c in compiled if c.search(text)), "other")
    counts[name] += 1
    if "[kernel" in stack[0]:
        kernel[name] += 1
for line in open(sys.argv[2]):
    if not line.strip():
        flush(); stack = []
    elif line[0] in " \t":
        stack.append(line.strip())
flush()
print(f"{total} samples; phase, share, of it in the kernel, CPU per call")
for name, n in counts.most_common():
    print(f"  {name:42s} {100 * n / total:5.1f} %  ({100 * kernel[name] / n:3.0f} % kernel)  "
          f"{per_call * n / total:.3f} ms")
PY
