#!/usr/bin/env bash
# SIP transaction rate of `watrunk serve` next to a SIPp UAS measured in the same run: the same SIPp UAC
# sends OPTIONS (-> 200) over UDP at increasing rates to each, and the highest rate with no failed
# transaction is reported, plus the ratio. Machines are shared and noisy: the ratio is the figure to read.
# Then the same for calls: a SIPp UAC places INVITE (SDES offer) -> 200 -> ACK -> BYE -> 200 calls,
# without media, over UDP at increasing call rates to `serve` (auto-answer, media relayed to a discard
# sink) and to a SIPp UAS (bench_call_uas.xml).
#   scripts/bench-sipp.sh [seconds-per-step]        (needs sip-tester; builds watrunk --release)
# RATES: OPTIONS/s steps; CALL_RATES: calls/s steps; CALLS=0: skip the call steps.
# Writes `sipp_ratio` and `sipp_call_ratio` into docs/benchmarks.json (NO_JSON=1: does not).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q -p watrunk
bin=${CARGO_TARGET_DIR:-target}/release/watrunk
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
scen=$PWD/tests/peers/sipp

uac() { # target rate label -> exit status of sipp
  local target=$1 rate=$2
  timeout $((secs + 30)) sipp -sf "$scen/options.xml" -s probe -t u1 -i 127.0.0.1 -p "$((26000 + RANDOM % 1000))" "$target" \
    -r "$rate" -m $((rate * secs)) -nostdin -timeout $((secs + 20)) -timeout_error -buff_size 8388608 \
    -trace_stat -stf "$work/stat-$3-$rate.csv" >"$work/uac-$3-$rate.log" 2>&1
}

# One call: INVITE to the business number (the Request-URI's user) -> 200 -> ACK -> BYE -> 200.
call_uac() { # target rate label -> exit status of sipp
  local target=$1 rate=$2
  timeout $((secs + 40)) sipp -sf "$scen/bench_call_uac.xml" -s "$number" -t u1 -i 127.0.0.1 -p "$((27000 + RANDOM % 1000))" \
    -mp 29000 "$target" -r "$rate" -m $((rate * secs)) -l $((rate * 10 + 1000)) -nostdin -timeout $((secs + 30)) -timeout_error \
    -buff_size 8388608 -trace_stat -stf "$work/call-stat-$3-$rate.csv" >"$work/call-uac-$3-$rate.log" 2>&1
}

# Writes KEY = A / B (two decimals) into docs/benchmarks.json, unless B is 0 or NO_JSON is set.
write_ratio() { # key a b
  { [ "$3" -gt 0 ] && [ -f docs/benchmarks.json ] && [ -z "${NO_JSON:-}" ]; } || return 0
  python3 - "$@" <<'PY'
import json, sys
path = "docs/benchmarks.json"
data = json.load(open(path))
data[sys.argv[1]] = round(int(sys.argv[2]) / int(sys.argv[3]), 2)
json.dump(data, open(path, "w"), indent=2, sort_keys=True)
open(path, "a").write("\n")
PY
}

# A step counts when every transaction succeeded and it was carried at its rate: a step that took
# over 1.25x its time was not (the offered rate was not reached, by the server or the generator).
max_rate() { # target label [uac-function rates]
  local best=0 start took run=${3:-uac}
  for rate in ${4:-${RATES:-1000 2000 4000 6000 8000 10000 12000 16000}}; do
    start=$(date +%s%N)
    if ! "$run" "$1" "$rate" "$2"; then
      [ "$run" = uac ] || echo "$2: $rate/s: not every call succeeded (or sipp did not finish)" >&2
      break
    fi
    took=$(( ($(date +%s%N) - start) / 1000000 ))
    [ "$run" = uac ] || echo "$2: $rate/s: every call succeeded, in ${took} ms for ${secs} s of calls" >&2
    if [ "$took" -gt $((secs * 1250)) ]; then
      echo "$2: $rate/s took ${took} ms for ${secs} s of requests" >&2
      break
    fi
    best=$rate
  done
  echo "$best"
}

# One SIPp is one source address: the per-source UDP rate limit (500/s, docs/security.md) is a
# policy against floods, not a capacity, so it is lifted here.
printf '[limits]\nudp_per_source_rate = 10000000\n' > "$work/bench.toml"
"$bin" serve --hostname localhost --tls 127.0.0.1:0 --udp 127.0.0.1:25060 --state-dir "$work" \
  --config "$work/bench.toml" 2>"$work/watrunk.log" &
wpid=$!
sleep 1
sipp -sf "$scen/uas_options.xml" -t u1 -i 127.0.0.1 -p 25070 -bg -buff_size 8388608 >/dev/null 2>&1 || true  # -bg exits 99
sleep 0.5

w=$(max_rate 127.0.0.1:25060 watrunk)
s=$(max_rate 127.0.0.1:25070 sipp)
pkill -f -- '-p 25070' || true
echo "nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "steps: ${secs}s each at ${RATES:-1000 2000 4000 6000 8000 10000 12000 16000} OPTIONS/s; highest step with 0 failed transactions, carried in time:"
echo "watrunk serve: $w/s"
echo "SIPp UAS:      $s/s"
if [ "$s" -gt 0 ]; then echo "ratio watrunk/SIPp: $(awk -v a="$w" -v b="$s" 'BEGIN{printf "%.2f", a/b}')"; fi
# docs/benchmarks.json's `sipp_ratio`: watrunk's loss-free OPTIONS rate over the SIPp UAS's, this run.
write_ratio sipp_ratio "$w" "$s"

[ "${CALLS:-1}" = 0 ] && exit 0
# Calls: INVITE-200-ACK-BYE without media, over UDP as above (this SIPp has no TLS), a fresh `serve`
# answering on its own (auto-answer) and relaying each call's media to a discard socket (nothing is
# sent: the calls are set up and ended at once). Policies lifted, since one SIPp is one source: the
# per-source UDP rate (500 datagrams/s: flood protection; a call is 3 datagrams from the caller) and
# the per-source transaction limit (1,024 open at once from one address: an answered INVITE's
# transaction waits 32 s over UDP for a retransmitted INVITE, RFC 6026 Timer L, so one address could
# not place more than 32 calls/s sustained). The global limits (max_transactions) are kept.
kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true
number=+12145551869
call_rates=${CALL_RATES:-100 200 400 800 1200 1600 2400}
python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 29990))
while True: s.recv(65536)' &
printf '[limits]\nudp_per_source_rate = 10000000\nmax_transactions_per_source = 10000000\n' > "$work/bench-calls.toml"
"$bin" serve --hostname localhost --tls 127.0.0.1:0 --udp 127.0.0.1:25062 --state-dir "$work" \
  --config "$work/bench-calls.toml" --number "$number" --media-ip 127.0.0.1 --media-port 0 --sink 127.0.0.1:29990 --drain-timeout-secs 1 \
  2>"$work/watrunk-calls.log" &
wpid=$!
sleep 1
sipp -sf "$scen/bench_call_uas.xml" -t u1 -i 127.0.0.1 -p 25080 -mp 29100 -bg -buff_size 8388608 >/dev/null 2>&1 || true  # -bg exits 99
sleep 0.5

wc=$(max_rate 127.0.0.1:25062 watrunk call_uac "$call_rates")
sc=$(max_rate 127.0.0.1:25080 sipp call_uac "$call_rates")
pkill -f -- '-p 25080' || true
echo "call steps: ${secs}s each at $call_rates calls/s (INVITE-200-ACK-BYE, SDES offer, no media); highest step with 0 failed calls, carried in time:"
echo "watrunk serve: $wc calls/s"
echo "SIPp UAS:      $sc calls/s"
if [ "$sc" -gt 0 ]; then echo "call ratio watrunk/SIPp: $(awk -v a="$wc" -v b="$sc" 'BEGIN{printf "%.2f", a/b}')"; fi
echo "watrunk log: $(grep -c ' WARN \| ERROR ' "$work/watrunk-calls.log" || true) warnings or errors" >&2
grep ' WARN \| ERROR ' "$work/watrunk-calls.log" | sed 's/^[^ ]* //' | sort | uniq -c | sort -rn | head -5 >&2 || true
# docs/benchmarks.json's `sipp_call_ratio`: watrunk's loss-free call rate over the SIPp UAS's, this run.
write_ratio sipp_call_ratio "$wc" "$sc"
