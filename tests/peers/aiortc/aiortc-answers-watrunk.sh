#!/usr/bin/env bash
# `watrunk media offer` (ICE controlling, DTLS actpass) and aiortc answering it (full ICE, controlled,
# setup:active: aiortc is the DTLS client, we are the server), as a business-initiated call to a
# WebRTC stack would go. A local sink plays 880 Hz into watrunk and records; aiortc plays 440 Hz.
# With RESTART_SINK=1 the sink is stopped half-way and a new one (another SSRC, sequence and timestamp)
# takes over: the SSRCs watrunk sent, read from a capture, must still be one.
# With CLAIM_CONTROLLING=TIEBREAKER aiortc answers but claims the controlling role too (a role conflict).
# With MEDIA_IP6=ADDR that IPv6 address is put on lo and given to watrunk as --media-ip6 (one
# dual-stack media socket for both families).
# CONSENT=SECS: as in watrunk-answers-aiortc.sh (aiortc checks consent every SECS, watrunk's timeout
# is 8 x SECS, the checks after set-up are counted from the capture).
#   unshare -n -- bash aiortc-answers-watrunk.sh WORKDIR   env: WATRUNK (binary), SECS (5), RESTART_SINK,
#   CLAIM_CONTROLLING, MEDIA_IP6, CONSENT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$1; mkdir -p "$work"; cd "$work"
secs=${SECS:-5}
source "$here/namespace.sh"
media_secs=$((secs + 3)); consent_args=()
if [ -n "${CONSENT:-}" ]; then
  # The call ends about when aiortc does; a timeout of 8 x SECS (checks every 4 x SECS) outlasts
  # the moment between aiortc leaving and watrunk's end.
  media_secs=$((secs + 1))
  consent_args=(--consent-timeout-secs "$(/usr/bin/python3 -c "print(8 * $CONSENT)")")
fi

printf 'v=0\r\nc=IN IP4 %s\r\nm=audio 41002 RTP/AVP 111\r\n' "$ip" > sink-peer.sdp
if [ -n "${MEDIA_IP6:-}" ]; then ip -6 addr add "$MEDIA_IP6/128" dev lo nodad; fi
WATRUNK_LOG='warn,dtls=error,webrtc_ice=error' "$WATRUNK" media offer --offer-out offer.sdp --answer answer.sdp --media-ip "$ip" ${MEDIA_IP6:+--media-ip6 "$MEDIA_IP6"} \
  --sink "$ip:41000" --local-rtp "$ip:41002" --seconds "$media_secs" "${consent_args[@]}" > media.log 2>&1 & mpid=$!; pids+=($mpid)
for _ in $(seq 200); do [ -s offer.sdp ] && break; sleep 0.05; done
[ -s offer.sdp ] || { echo "FAIL watrunk wrote no offer"; cat media.log; exit 1; }
/usr/bin/python3 "$here/peer.py" answer --sdp-in offer.sdp --sdp-out answer.sdp --record aiortc-rx.wav \
  --freq 440 --seconds "$secs" ${CLAIM_CONTROLLING:+--claim-controlling "$CLAIM_CONTROLLING"} \
  ${CONSENT:+--consent-interval "$CONSENT"} > aiortc.log 2>&1 & apid=$!; pids+=($apid)
for _ in $(seq 400); do [ -s answer.sdp ] && break; sleep 0.05; done
if [ "${RESTART_SINK:-0}" = 1 ]; then
  half=$(( secs / 2 ))
  $helper plain --bind "$ip:41000" --peer-sdp sink-peer.sdp --freq 880 --seconds "$half" --wav sink-rx-1.wav \
    --start immediate --ssrc 1111 > sink1.log 2>&1
  $helper plain --bind "$ip:41000" --peer-sdp sink-peer.sdp --freq 880 --seconds "$half" --wav sink-rx.wav \
    --start immediate --ssrc 2222 > sink.log 2>&1 & spid=$!; pids+=($spid)
else
  $helper plain --bind "$ip:41000" --peer-sdp sink-peer.sdp --freq 880 --seconds "$((secs + 2))" --wav sink-rx.wav \
    --start immediate --ssrc 1234 > sink.log 2>&1 & spid=$!; pids+=($spid)
fi

status=0
wait "$apid" || status=$?
wait "$mpid" || status=$?
wait "$spid" || true
sleep 0.2; kill "$tpid" 2>/dev/null || true; wait "$tpid" 2>/dev/null || true
port=$(grep -o '"event":"ice.connected","local":"[^"]*' media.log | sed 's/.*://')
echo "sent-ssrcs: $(/usr/bin/python3 "$here/../rtpengine/ssrcs.py" cap.pcap "$port")"
echo "consent: $(/usr/bin/python3 "$here/../rtpengine/consent.py" cap.pcap "$port")"
echo "--- aiortc"; cat aiortc.log
echo "--- watrunk"; cat media.log
echo "aiortc-rx: $($helper freq aiortc-rx.wav)"
echo "sink-rx: $($helper freq sink-rx.wav)"
exit "$status"
