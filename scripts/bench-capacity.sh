#!/usr/bin/env bash
# Capacity benchmark (docs/benchmarks.md "Capacity", docs/benchmarks.json, docs/capacity.png, and the
# raw sim.load lines in docs/capacity-results.jsonl, from which `watrunk-bench report` can redo the rest):
# `watrunk sim load` places N concurrent WhatsApp-user calls (TLS SIP, 407, SDES or ICE-lite + DTLS,
# 50 packets/s each way, echoed by the agent side in the same process) through a release
# `watrunk serve`, then has the business place N calls to users through serve's API (sim load
# playing Meta's SIP server: 407, ICE-lite, DTLS), and sends the same packet load through
# rtpengine's userspace relay (SDES-SRTP <-> RTP) and through `watrunk sim bare-relay` (plain UDP,
# same socket layout), one after the other in the same run. Then set-up runs (DTLS at 200 and 500
# set-ups/s, calls of 0.2 s for the CPU of one set-up, and business-placed calls at 200/s). Runs in
# a private network namespace (ICE peers skip loopback), as root.
#
#   scripts/bench-capacity.sh                 # CALLS="100 250 500 750 1000" WINDOW=10
#   CALLS="500 1000" WINDOW=5 scripts/bench-capacity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${WATRUNK_BENCH_NETNS:-}" ]; then
  need=()
  command -v rtpengine >/dev/null 2>&1 || need+=(rtpengine-daemon)
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
  command -v cmake >/dev/null 2>&1 || need+=(cmake)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  fi
  cargo build --release --locked -p watrunk -p watrunk-bench
  exec unshare -n env WATRUNK_BENCH_NETNS=1 bash "$0" "$@"
fi

ip link set lo up
ip addr add 198.18.0.1/32 dev lo
ulimit -n 20000 2>/dev/null || true
IP=198.18.0.1
W=$root/target/release/watrunk
CALLS=${CALLS:-"100 250 500 750 1000"}
WINDOW=${WINDOW:-10}
RAMP=${RAMP:-250}
out=$root/target/bench/capacity
rm -rf "$out" && mkdir -p "$out"
results=$out/results.jsonl
echo secret > "$out/pw"
# One `sim load` is one source address for all its calls' TLS connections and transactions: the
# per-source limits (docs/security.md) are policies against one host taking everything, not
# capacities, so they are lifted here.
printf '[limits]\nmax_connections_per_source = 100000\nmax_transactions_per_source = 100000\n' > "$out/bench.toml"
# Meta's TLS certificate for business-placed calls (serve trusts it with --tls-ca).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=$IP" \
  -addext "subjectAltName=IP:$IP" -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$out/meta.key" -out "$out/meta.crt" 2>/dev/null
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

load() { # through, extra args...
  local through=$1; shift
  timeout 300 "$W" sim load --through "$through" --media-ip $IP --sink $IP:4100 --window "$WINDOW" "$@" \
    >> "$results" 2>> "$out/load.err" || echo "load $through $* failed (see $out/load.err)" >&2
  tail -n 1 "$results" | cut -c1-160 >&2
}

serve() { # srtp
  "$W" serve --hostname localhost --tls $IP:5061 --state-dir "$out/state" --config "$out/bench.toml" \
    --number +15550001111 --sip-password-file "$out/pw" --challenge --digest-algorithm both \
    --srtp "$1" --media-ip $IP --sink $IP:4100 --api 127.0.0.1:8061 --meta-server $IP:5062 \
    --tls-ca "$out/meta.crt" > "$out/serve.out" 2>> "$out/serve.err" &
  SERVE=$!; pids+=("$SERVE")
  for _ in $(seq 50); do [ -f "$out/state/localhost.selfsigned.crt" ] && break; sleep 0.1; done
  sleep 0.5
}

through_watrunk() { # srtp, calls, extra...
  local srtp=$1 n=$2; shift 2
  serve "$srtp"
  load watrunk --target $IP:5061 --server-name localhost --ca "$out/state/localhost.selfsigned.crt" \
    --password-file "$out/pw" --srtp "$srtp" --calls "$n" --pid "$SERVE" "$@"
  kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
}

business_calls() { # srtp, calls, extra...
  local srtp=$1 n=$2; shift 2
  serve "$srtp"
  load watrunk --direction to-user --api 127.0.0.1:8061 --listen $IP:5062 --cert "$out/meta.crt" \
    --key "$out/meta.key" --password-file "$out/pw" --srtp "$srtp" --calls "$n" --pid "$SERVE" "$@"
  kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
}

for n in $CALLS; do
  echo "== $n calls" >&2
  through_watrunk sdes "$n" --rate $RAMP
  through_watrunk dtls "$n" --rate $RAMP
  business_calls dtls "$n" --rate $RAMP
  rtpengine --foreground --log-stderr --table=-1 --interface=$IP --listen-ng=127.0.0.1:2223 \
    --port-min=20000 --port-max=29999 --log-level=3 2>> "$out/rtpengine.err" &
  rtpe=$!; pids+=("$rtpe"); sleep 1
  load rtpengine --srtp sdes --calls "$n" --rate $RAMP --pid $rtpe
  kill $rtpe; wait $rtpe 2>/dev/null || true
  "$W" sim bare-relay --listen $IP:4200 --sink $IP:4100 2>> "$out/bare.err" &
  bare=$!; pids+=("$bare"); sleep 0.3
  load bare --relay $IP:4200 --calls "$n" --rate $RAMP --pid $bare
  kill $bare; wait $bare 2>/dev/null || true
done

echo "== set-up rate" >&2
sleep 5 # the sweep's last sockets and processes gone first
for rate in 200 500; do
  through_watrunk dtls 1000 --total 1000 --rate $rate --hold 2
done
# setup_cpu_ms: calls of 0.2 s, so that a call's CPU is mostly its set-up and tear-down (the report
# takes off the few packets each relayed, at the sweep's cost per packet).
through_watrunk dtls 1000 --total 1000 --rate 200 --hold 0.2
business_calls dtls 1000 --total 1000 --rate 200 --hold 2

"$root/target/release/watrunk-bench" report "$results" --docs "$root/docs"
cp "$results" "$root/docs/capacity-results.jsonl"
