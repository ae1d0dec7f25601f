#!/usr/bin/env bash
# SIP transaction rate of `watrunk serve` next to a SIPp UAS measured in the same run: the same SIPp UAC
# sends OPTIONS (-> 200) over UDP at increasing rates to each, and the highest rate with no failed
# transaction is reported, plus the ratio. Machines are shared and noisy: the ratio is the figure to read.
#   scripts/bench-sipp.sh [seconds-per-step]        (needs sip-tester; builds watrunk --release)
# Writes `sipp_ratio` into docs/benchmarks.json (NO_JSON=1: does not).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q -p watrunk
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
scen=$PWD/tests/peers/sipp

uac() { # target rate -> exit status of sipp
  local target=$1 rate=$2
  timeout $((secs + 30)) sipp -sf "$scen/options.xml" -s probe -t u1 -i 127.0.0.1 -p "$((26000 + RANDOM % 1000))" "$target" \
    -r "$rate" -m $((rate * secs)) -nostdin -timeout $((secs + 20)) -timeout_error -buff_size 8388608 \
    -trace_stat -stf "$work/stat-$3-$rate.csv" >"$work/uac-$3-$rate.log" 2>&1
}

# A step counts when every transaction succeeded and it was carried at its rate: a step that took
# over 1.25x its time was not (the offered rate was not reached, by the server or the generator).
max_rate() { # target label
  local best=0 start took
  for rate in ${RATES:-1000 2000 4000 6000 8000 10000 12000 16000}; do
    start=$(date +%s%N)
    if ! uac "$1" "$rate" "$2"; then break; fi
    took=$(( ($(date +%s%N) - start) / 1000000 ))
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
./target/release/watrunk serve --hostname localhost --tls 127.0.0.1:0 --udp 127.0.0.1:25060 --state-dir "$work" \
  --config "$work/bench.toml" 2>"$work/watrunk.log" &
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
if [ "$s" -gt 0 ] && [ -f docs/benchmarks.json ] && [ -z "${NO_JSON:-}" ]; then
  python3 - "$w" "$s" <<'PY'
import json, sys
path = "docs/benchmarks.json"
data = json.load(open(path))
data["sipp_ratio"] = round(int(sys.argv[1]) / int(sys.argv[2]), 2)
json.dump(data, open(path, "w"), indent=2, sort_keys=True)
open(path, "a").write("\n")
PY
fi
