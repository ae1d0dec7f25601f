#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets in fuzz/ (cargo-fuzz, libFuzzer) one after another.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 60 s, every target)
#
# Installs cargo-fuzz when missing (needs the nightly toolchain). Each target's corpus lives in
# fuzz/corpus/<target> (git-ignored): seeded at every run from tests/data by scripts/fuzz_seeds.py,
# kept between runs. Prints one line per target (runs, exec/s, cov, ft, corpus); exits non-zero
# when a target crashed, with the artifact to reproduce it (full log in fuzz/logs/<target>.log).
# For long runs on a shared machine: nice -n 10 scripts/fuzz.sh 600
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(sip_stream sip_datagram digest sdp media_demux)
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

cd fuzz
mkdir -p corpus logs
# Debug assertions on: integer overflow and debug_assert! count as crashes.
cargo +nightly fuzz build -O --debug-assertions 2>logs/build.log || { tail -30 logs/build.log; exit 1; }

failed=()
for t in "${targets[@]}"; do
  python3 ../scripts/fuzz_seeds.py "$t" "corpus/$t" >/dev/null
  log="logs/$t.log"
  rc=0
  cargo +nightly fuzz run -O --debug-assertions "$t" "corpus/$t" -- \
    -max_total_time="$secs" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  stats=$(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -1 || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$stats")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$stats")
  corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$stats")
  if ((rc == 0)); then
    echo "$t: ok ${secs}s runs=${runs:-?} exec/s=${speed:-?} cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?}"
  else
    artifact=$(sed -nE 's/.*(Test unit|Crash input) written to (\S+).*/\2/p' "$log" | tail -1)
    [[ -z $artifact || $artifact == /* ]] || artifact="fuzz/$artifact"
    echo "$t: CRASH (exit $rc) after runs=${runs:-?} artifact=${artifact:-?} log=fuzz/$log"
    grep -m3 -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)' "$log" || true
    echo "  reproduce: (cd fuzz && cargo +nightly fuzz run -O --debug-assertions $t ${artifact:-ARTIFACT})"
    failed+=("$t")
  fi
done

if ((${#failed[@]})); then
  echo "fuzz: crashes in ${failed[*]}"
  exit 1
fi
