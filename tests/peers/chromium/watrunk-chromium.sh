#!/usr/bin/env bash
# Headless Chromium (the real browser WebRTC stack, driven over CDP by chromium_peer.py) against
# `watrunk media`, two-way tone: Chromium plays 440 Hz and reports the peak frequency it receives;
# watrunk's local sink (standin_helper.py plain) plays 880 Hz and records.
#   unshare -n -- bash watrunk-chromium.sh WORKDIR chromium-offers|watrunk-offers   env: WATRUNK, SECS (4)
# Chromium ignores the loopback interface for ICE: a veth pair v0/v1 (198.18.0.1/.2) is made here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$1; mode=$2; mkdir -p "$work"; cd "$work"
secs=${SECS:-4}; ip=198.18.0.1
ip link set lo up
ip link add v0 type veth peer name v1
ip addr add 198.18.0.1/24 dev v0; ip addr add 198.18.0.2/24 dev v1
ip link set v0 up; ip link set v1 up
# Chromium gathers no candidates without a default route; nothing lies beyond it in this namespace.
ip route add default via 198.18.0.2 dev v0
helper="/usr/bin/python3 $here/../rtpengine/standin_helper.py"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
printf 'v=0\r\nc=IN IP4 %s\r\nm=audio 41002 RTP/AVP 111\r\n' "$ip" > sink-peer.sdp
# watrunk outlives the call (Chromium can take seconds to start on a loaded machine) and is stopped
# when Chromium is done.
media_args=(--media-ip "$ip" --sink "$ip:41000" --local-rtp "$ip:41002" --seconds "$((secs + 30))")
export WATRUNK_LOG='warn,dtls=error,webrtc_ice=error'

case "$mode" in
  chromium-offers)
    /usr/bin/python3 "$here/chromium_peer.py" offer --sdp-out offer.sdp --sdp-in answer.sdp --freq 440 \
      --seconds "$secs" > chromium.json 2> chromium.log & cpid=$!; pids+=($cpid)
    for _ in $(seq 600); do [ -s offer.sdp ] && break; sleep 0.05; done
    sleep 0.2
    [ -s offer.sdp ] || { echo "FAIL chromium wrote no offer"; cat chromium.log; exit 1; }
    "$WATRUNK" media answer --offer offer.sdp --answer-out answer.sdp "${media_args[@]}" > media.log 2>&1 & mpid=$!; pids+=($mpid)
    ;;
  watrunk-offers)
    "$WATRUNK" media offer --offer-out offer.sdp --answer answer.sdp "${media_args[@]}" > media.log 2>&1 & mpid=$!; pids+=($mpid)
    for _ in $(seq 200); do [ -s offer.sdp ] && break; sleep 0.05; done
    /usr/bin/python3 "$here/chromium_peer.py" answer --sdp-in offer.sdp --sdp-out answer.sdp --freq 440 \
      --seconds "$secs" > chromium.json 2> chromium.log & cpid=$!; pids+=($cpid)
    ;;
  *) echo "mode: chromium-offers or watrunk-offers"; exit 2 ;;
esac
# The sink starts once both SDPs exist, so that its recording covers the call whatever the start-up
# times; it records for as long as Chromium plays.
for _ in $(seq 600); do [ -s answer.sdp ] && break; sleep 0.05; done
$helper plain --bind "$ip:41000" --peer-sdp sink-peer.sdp --freq 880 --seconds "$((secs + 1))" --wav sink-rx.wav \
  --start immediate --ssrc 1234 > sink.log 2>&1 & spid=$!; pids+=($spid)
status=0
wait "$cpid" || status=$?
wait "$spid" || true
kill "$mpid" 2>/dev/null || true
wait "$mpid" 2>/dev/null || true
echo "--- chromium"; cat chromium.json
echo "--- watrunk"; cat media.log
echo "sink-rx: $($helper freq sink-rx.wav)"
exit "$status"
