#!/usr/bin/env bash
# Hands the SDP that watrunk produces to real third-party stacks and records whether they accept it:
#
#   unshare -n -- env WATRUNK=/path/to/watrunk bash accept-answer.sh OUTDIR     (root; private network namespace)
#
# WATRUNK defaults to target/debug/watrunk of this checkout. In OUTDIR, for PEER in aiortc, chromium:
#   PEER-offer.sdp               the peer's live offer; watrunk answers it (`watrunk sdp answer --media-addr ...
#   PEER-answer.sdp              --plan-out PEER-answer.plan.json`); the peer applies it with setRemoteDescription:
#   PEER-answer.result           "OK" + a JSON line (what the stack negotiated), or the stack's error text
#   PEER-control.sdp/.result     control: the same answer with a=setup:actpass (illegal in an answer), applied first;
#                                the stack must refuse it (shows that the check above is not vacuous)
#   our-offer-PEER.sdp           `watrunk sdp offer --media-addr ...`; the peer answers it (setRemoteDescription(offer)
#   PEER-answer-to-ours.sdp      + createAnswer + setLocalDescription) into PEER-answer-to-ours.sdp,
#   PEER-answer-to-ours.result   "OK" + JSON, or the error text
# and for rtpengine (ICE-lite DTLS and SDES offers, as in capture-offers.sh), MODE in dtls, sdes:
#   rtpengine-MODE-offer.sdp, rtpengine-MODE-answer.sdp (ours; --srtp sdes for sdes), rtpengine-MODE-answer.plan.json,
#   rtpengine-MODE-answer.result  "OK" when rtpengine's ng `answer` reply has result ok, else its reply
#   rtpengine-MODE-plain-answer.sdp   what rtpengine turned our answer into for the plain RTP side
# NAME.watrunk-error             watrunk refused to answer NAME's offer (stderr); summary.txt: one line per check.
# Exit 0 when every step worked (the Rust test interop_sdp.rs checks the files' contents itself).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: unshare -n -- env WATRUNK=... bash $0 OUTDIR" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
W=${WATRUNK:-$here/../../../target/debug/watrunk}
[ -x "$W" ] || { echo "accept-answer.sh: no watrunk binary at $W (cargo build -p watrunk, or set WATRUNK)" >&2; exit 2; }
PY=/usr/bin/python3
IP=198.18.0.1
NG_PORT=2223
logs=$out/logs
mkdir -p "$logs"
rm -f "$out"/*.sdp "$out"/*.result "$out"/*.json "$out"/*.watrunk-error "$out"/summary.txt

if ip -o link show | grep -qvE ': lo[:@]'; then
  echo "accept-answer.sh: run me inside a fresh network namespace: unshare -n -- bash $0 OUTDIR" >&2; exit 2
fi
ip link set lo up
ip addr add "$IP/32" dev lo 2>/dev/null || true

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 143' INT TERM   # (exit runs the EXIT trap: a timeout still stops the peers)
t0=$EPOCHREALTIME
elapsed() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b - a}'; }
wait_for() { # file seconds
  local i
  for ((i = 0; i < $2 * 50; i++)); do [ -s "$1" ] && return 0; sleep 0.02; done
  return 1
}
put() { mv "$1.tmp" "$1"; }   # peers poll for the file: make it appear complete
# answer_with NAME PORT [extra watrunk args]: NAME-offer.sdp -> NAME-answer.sdp (+ plan), or NAME.watrunk-error
answer_with() {
  local n=$1 port=$2; shift 2
  if "$W" sdp answer "$out/$n-offer.sdp" --media-addr "$IP:$port" --plan-out "$out/$n-answer.plan.json" "$@" \
      > "$out/$n-answer.sdp.tmp" 2> "$out/$n.watrunk-error"; then
    rm -f "$out/$n.watrunk-error"
    sed 's/^a=setup:active\r\?$/a=setup:actpass\r/' "$out/$n-answer.sdp.tmp" > "$out/$n-control.sdp.tmp"
    put "$out/$n-control.sdp"
    put "$out/$n-answer.sdp"
  else
    echo "watrunk refused $n-offer.sdp: $(cat "$out/$n.watrunk-error")" >&2
    # let the peer go on (it fails to apply this) rather than wait for its timeout
    echo "v=0" > "$out/$n-control.sdp"; echo "v=0" > "$out/$n-answer.sdp"
    return 1
  fi
}

# our offers, written before the peers start (they wait for them)
"$W" sdp offer --media-addr "$IP:40010" > "$out/our-offer-aiortc.sdp"
"$W" sdp offer --media-addr "$IP:40012" > "$out/our-offer-chromium.sdp"

# --- rtpengine --------------------------------------------------------------------------------------------------
/usr/bin/rtpengine --foreground --log-stderr --table=-1 --interface="$IP" --listen-ng=127.0.0.1:$NG_PORT \
  --port-min=30000 --port-max=30099 --log-level=6 > "$logs/rtpengine.log" 2>&1 &
pids+=($!)

# --- aiortc and Chromium (nested namespace with a veth pair and a default route, see capture-offers.sh) --------------
peer_args() { # PEER
  echo --offer-out "$out/$1-offer.sdp" --control-answer-in "$out/$1-control.sdp" --control-result "$out/$1-control.result" \
    --answer-in "$out/$1-answer.sdp" --result "$out/$1-answer.result" \
    --remote-offer-in "$out/our-offer-$1.sdp" --answer-out "$out/$1-answer-to-ours.sdp" \
    --answer-result "$out/$1-answer-to-ours.result" --timeout 60
}
# shellcheck disable=SC2046
$PY "$here/aiortc_peer.py" $(peer_args aiortc) > "$logs/aiortc.log" 2>&1 &
apid=$!; pids+=($apid)
# shellcheck disable=SC2046
unshare -n -- bash -c '
  set -e
  ip link set lo up
  ip link add v0 type veth peer name v1
  ip addr add 198.18.0.1/24 dev v0; ip addr add 198.18.0.2/24 dev v1
  ip link set v0 up; ip link set v1 up
  ip route add default via 198.18.0.2 dev v0
  py=$1; shift; exec /usr/bin/python3 "$py" "$@"' chromium "$here/chromium_peer.py" $(peer_args chromium) \
  > "$logs/chromium.log" 2>&1 &
cpid=$!; pids+=($cpid)

# --- rtpengine: ICE-lite DTLS and SDES offers (as in capture-offers.sh), answered by watrunk, fed back with ng answer --
NG="$PY $here/../rtpengine/ng.py --ng 127.0.0.1:$NG_PORT"
for ((i = 0; i < 200; i++)); do grep -q 'Startup complete' "$logs/rtpengine.log" 2>/dev/null && break; sleep 0.025; done
$NG ping > /dev/null || { echo "rtpengine does not answer ng ping:"; cat "$logs/rtpengine.log"; exit 1; }
printf '%s\r\n' v=0 "o=- 7602563789789945080 2 IN IP4 127.0.0.1" s=- 't=0 0' 'a=group:BUNDLE audio' \
  "m=audio 40000 RTP/AVP 111 126" "c=IN IP4 $IP" 'a=mid:audio' 'a=sendrecv' 'a=rtpmap:111 opus/48000/2' \
  'a=fmtp:111 minptime=10;useinbandfec=1' 'a=rtpmap:126 telephone-event/8000' 'a=ssrc:4208138518 cname:gAXq2V9TKltrnapv' \
  > "$logs/plain-offer.sdp"
common='"replace":["session-connection"],"rtcp-mux":["require"],"flags":["no-rtcp-attribute"]'
dtls_flags='{"transport-protocol":"UDP/TLS/RTP/SAVPF","ICE":"force","ICE-lite":"forward","DTLS":"passive","SDES":["off"],'"$common"'}'
no=""
for s in AEAD_AES_256_GCM AEAD_AES_128_GCM AES_256_CM_HMAC_SHA1_80 AES_256_CM_HMAC_SHA1_32 AES_192_CM_HMAC_SHA1_80 \
  AES_192_CM_HMAC_SHA1_32 AES_CM_128_HMAC_SHA1_32 F8_128_HMAC_SHA1_80 F8_128_HMAC_SHA1_32 NULL_HMAC_SHA1_80 \
  NULL_HMAC_SHA1_32; do no="$no\"no-$s\","; done
sdes_flags='{"transport-protocol":"RTP/SAVP","ICE":"remove","DTLS":"off","SDES":['"${no%,}"'],'"$common"'}'
rc=0
for mode in dtls sdes; do
  n=rtpengine-$mode; flags=${mode}_flags; srtp=()
  [ $mode = sdes ] && srtp=(--srtp sdes)
  $NG offer "accept-$mode" meta "$logs/plain-offer.sdp" "${!flags}" > "$out/$n-offer.sdp" \
    || { echo "rtpengine $mode offer failed: $(cat "$out/$n-offer.sdp")"; rc=1; continue; }
  if answer_with "$n" $((40020 + ${#mode})) "${srtp[@]}"; then
    if $NG answer "accept-$mode" meta ours "$out/$n-answer.sdp" '{"replace":["origin","session-connection"]}' \
        > "$out/$n-plain-answer.sdp"; then
      echo OK > "$out/$n-answer.result"
    else
      { echo "rtpengine refused the answer:"; cat "$out/$n-plain-answer.sdp"; } > "$out/$n-answer.result"
      rm -f "$out/$n-plain-answer.sdp"; rc=1
    fi
  else
    rc=1
  fi
  rm -f "$out/$n-control.sdp"   # no control for rtpengine: it accepts anything ng can parse
  $NG delete "accept-$mode" meta > /dev/null || true
done

# --- aiortc / Chromium: answer their offers as they appear ------------------------------------------------------------
for peer in aiortc chromium; do
  if wait_for "$out/$peer-offer.sdp" 60; then
    answer_with "$peer" $([ $peer = aiortc ] && echo 40030 || echo 40032) || rc=1
  else
    echo "$peer wrote no offer:"; cat "$logs/$peer.log"; rc=1
  fi
done
wait "$apid" || { echo "aiortc reported a failure (logs/aiortc.log)"; rc=1; }
wait "$cpid" || { echo "chromium reported a failure (logs/chromium.log)"; rc=1; }
for f in aiortc-answer aiortc-control aiortc-answer-to-ours chromium-answer chromium-control chromium-answer-to-ours \
  rtpengine-dtls-answer rtpengine-sdes-answer; do
  printf '%-24s %s\n' "$f" "$(head -1 "$out/$f.result" 2>/dev/null || echo MISSING)" >> "$out/summary.txt"
done
cat "$out/summary.txt"
echo "accept-answer took $(elapsed) s"
exit $rc
