#!/usr/bin/env bash
# PBX bridge benchmark (docs/benchmarks.md "Bridged calls"): the same `watrunk sim load` (N
# concurrent WhatsApp-user calls over TLS SIP with SDES, 50 packets/s each way, echoed by the agent
# side in the same process) through, one after the other in the same run:
#   bare      `watrunk sim bare-relay` (plain UDP, the reference)
#   agent     `watrunk serve --sink` (the relay alone, SRTP <-> RTP)
#   opus      `watrunk serve --pbx` with SIPp as the PBX answering opus/48000/2: passthrough
#   pcmu      the same with SIPp answering PCMU/8000: transcoded both ways
# SIPp's answer points the PBX leg's media at the sim's agent side, so every variant carries the
# same packets. Reported: the relay's CPU µs per relayed packet over the window, its ratios, and
# calls per relay core. The transcoded variant's PCMU carries no probe (transcoding rewrites the
# payloads they ride in): the agent sends it back as it is (`--echo-unstamped`), so the traffic
# keeps its rate both ways, but its loss and latency cannot be read this way (`cargo bench -p
# watrunk-media --bench transcode` measures those). Runs in a private network namespace, as root.
#
#   scripts/bench-bridge.sh                   # CALLS="100 250" WINDOW=8
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${WATRUNK_BENCH_NETNS:-}" ]; then
  command -v sipp >/dev/null 2>&1 || { echo "sipp is needed (scripts/test.sh installs it)" >&2; exit 1; }
  cargo build --release --locked -p watrunk
  exec unshare -n env WATRUNK_BENCH_NETNS=1 bash "$0" "$@"
fi

ip link set lo up
ip addr add 198.18.0.1/32 dev lo
ulimit -n 20000 2>/dev/null || true
IP=198.18.0.1
W=$root/target/release/watrunk
CALLS=${CALLS:-"100 250"}
WINDOW=${WINDOW:-8}
RAMP=${RAMP:-100}
out=$root/target/bench/bridge
rm -rf "$out" && mkdir -p "$out"
results=$out/results.jsonl
echo secret > "$out/pw"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

LOAD_EXTRA=()
load() { # variant, through, extra args...
  local variant=$1 through=$2; shift 2
  timeout 300 "$W" sim load --through "$through" --media-ip $IP --sink $IP:4100 --window "$WINDOW" "${LOAD_EXTRA[@]}" "$@" \
    > "$out/last.json" 2>> "$out/load.err" || echo "load $variant failed (see $out/load.err)" >&2
  tail -n 1 "$out/last.json" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["variant"]=sys.argv[1]; print(json.dumps(d))' "$variant" >> "$results"
  tail -n 1 "$results" | cut -c1-160 >&2
}

serve() { # extra serve args...
  "$W" serve --hostname localhost --tls $IP:5061 --udp $IP:5060 --state-dir "$out/state" \
    --number +15550001111 --sip-password-file "$out/pw" --challenge --srtp sdes --media-ip $IP \
    --api off "$@" > "$out/serve.out" 2>> "$out/serve.err" &
  SERVE=$!; pids+=("$SERVE")
  for _ in $(seq 50); do [ -f "$out/state/localhost.selfsigned.crt" ] && break; sleep 0.1; done
  sleep 0.5
}

through_serve() { # variant, calls, serve args...
  local variant=$1 n=$2; shift 2
  serve "$@"
  load "$variant" watrunk --target $IP:5061 --server-name localhost --ca "$out/state/localhost.selfsigned.crt" \
    --password-file "$out/pw" --srtp sdes --calls "$n" --rate $RAMP --pid "$SERVE"
  kill "$SERVE"; wait "$SERVE" 2>/dev/null || true
}

pbx() { # pt, codec
  sipp -sf "$root/tests/peers/sipp/pbx_uas_load.xml" -i $IP -p 5070 -t u1 -nostdin -bg \
    -set pt "$1" -set codec "$2" -set agent_ip $IP -set agent_port 4100 -l 5000 \
    -trace_err -error_file "$out/sipp.err" > /dev/null 2>&1 || true # -bg: the parent exits 99
  sleep 0.5
  pgrep -x sipp > /dev/null || { echo "sipp did not start (see $out/sipp.err)" >&2; exit 1; }
}

for n in $CALLS; do
  echo "== $n calls" >&2
  "$W" sim bare-relay --listen $IP:4200 --sink $IP:4100 2>> "$out/bare.err" &
  bare=$!; pids+=("$bare"); sleep 0.3
  load bare bare --relay $IP:4200 --calls "$n" --rate $RAMP --pid $bare
  kill $bare; wait $bare 2>/dev/null || true
  through_serve agent "$n" --sink $IP:4100
  pbx 111 opus/48000/2
  through_serve opus "$n" --pbx "sip:$IP:5070;transport=udp"
  pkill -x sipp || true; sleep 0.5
  pbx 0 PCMU/8000
  LOAD_EXTRA=(--echo-unstamped)
  through_serve pcmu "$n" --pbx "sip:$IP:5070;transport=udp"
  LOAD_EXTRA=()
  pkill -x sipp || true; sleep 0.5
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r.get("calls") or r.get("established"), {})[r["variant"]] = r
def us(r):
    w = r.get("window") or {}
    return w.get("relay_us_per_packet")
print("| calls | bare µs/pkt | relay to an agent µs/pkt | bridged, Opus passthrough µs/pkt | bridged, PCMU transcoded µs/pkt | passthrough / bare | passthrough / relay to an agent | transcoded / passthrough | calls per relay core (agent, passthrough, transcoded) | loss % in/out (bare, agent, passthrough) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for n, v in sorted(by.items()):
    b, a, o, t = (us(v.get(k, {})) for k in ("bare", "agent", "opus", "pcmu"))
    per_core = ", ".join(str((v.get(k, {}).get("window") or {}).get("calls_per_relay_core")) for k in ("agent", "opus", "pcmu"))
    loss = ", ".join(
        "{}/{}".format(v.get(k, {}).get("loss_pct", {}).get("to_agent"), v.get(k, {}).get("loss_pct", {}).get("to_meta"))
        for k in ("bare", "agent", "opus"))
    ratio = lambda x, y: f"{x / y:.2f}" if x and y else "-"
    print(f"| {n} | {b} | {a} | {o} | {t} | {ratio(o, b)} | {ratio(o, a)} | {ratio(t, o)} | {per_core} | {loss} |")
PY
