#!/usr/bin/env bash
# aiortc (a real WebRTC stack: full ICE, controlling, DTLS actpass) offers; `watrunk media answer`
# answers it and relays to a local sink (standin_helper.py plain: 880 Hz out, recorder in). Both sides'
# recordings are checked by frequency. Run inside `unshare -n` (root): aioice skips loopback addresses.
# INJECT=1: 2 s in, one of aiortc's SRTP packets is replayed 5 times and sent 5 times with a broken
# tag, from aiortc's own address (inject_srtp.py): watrunk must drop and count all of them.
# VANISH=1: aiortc goes away after SECS while watrunk keeps the call (consent timeout 6 s), which must
# end it with "consent expired". A stranger also sends RTP to watrunk's local port: it must be ignored.
# CONSENT=SECS: aiortc checks consent every SECS (peer.py --consent-interval) and watrunk's consent
# timeout is 8 x SECS (4 missed checks would be too tight on a loaded 2-core machine); the consent checks each way after set-up are counted from the capture.
#   unshare -n -- bash watrunk-answers-aiortc.sh WORKDIR   env: WATRUNK (binary), SECS (5), VANISH, CONSENT
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$1; mkdir -p "$work"; cd "$work"
secs=${SECS:-5}
source "$here/namespace.sh"

/usr/bin/python3 "$here/peer.py" offer --sdp-out offer.sdp --sdp-in answer.sdp --record aiortc-rx.wav \
  --freq 440 --seconds "$secs" ${CONSENT:+--consent-interval "$CONSENT"} > aiortc.log 2>&1 & apid=$!; pids+=($apid)
for _ in $(seq 600); do [ -s offer.sdp ] && break; sleep 0.05; done
[ -s offer.sdp ] || { echo "FAIL aiortc wrote no offer"; cat aiortc.log; exit 1; }

printf 'v=0\r\nc=IN IP4 %s\r\nm=audio 41002 RTP/AVP 111\r\n' "$ip" > sink-peer.sdp
$helper plain --bind "$ip:41000" --peer-sdp sink-peer.sdp --freq 880 --seconds "$secs" --wav sink-rx.wav \
  --start immediate --ssrc 1234 > sink.log 2>&1 & spid=$!; pids+=($spid)
media_secs=$((secs + 1)); [ "${VANISH:-0}" = 1 ] && media_secs=$((secs + 20))
consent_timeout=6; [ -n "${CONSENT:-}" ] && consent_timeout=$(/usr/bin/python3 -c "print(8 * $CONSENT)")
WATRUNK_LOG='warn,dtls=error,webrtc_ice=error' "$WATRUNK" media answer --offer offer.sdp --answer-out answer.sdp --media-ip "$ip" \
  --sink "$ip:41000" --local-rtp "$ip:41002" --seconds "$media_secs" --consent-timeout-secs "$consent_timeout" > media.log 2>&1 & mpid=$!; pids+=($mpid)
# A stranger (not the sink) sends 20 RTP packets to watrunk's local port once the call is up.
( for _ in $(seq 100); do [ -s answer.sdp ] && break; sleep 0.05; done; sleep 1
  /usr/bin/python3 -c "
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('$ip', 41999))
for i in range(20):
    s.sendto(bytes([0x80, 111, 0, i, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]) + b'stranger', ('$ip', 41002)); time.sleep(0.02)
" ) &

if [ "${INJECT:-0}" = 1 ]; then
  for _ in $(seq 100); do grep -q ice.connected media.log 2>/dev/null && break; sleep 0.05; done
  sleep 2
  port=$(grep -o '"event":"ice.connected","local":"[^"]*' media.log | sed 's/.*://')
  /usr/bin/python3 "$here/../rtpengine/inject_srtp.py" cap.pcap "$port"
fi
status=0
wait "$apid" || status=$?
wait "$mpid" || mstatus=$?
[ "${VANISH:-0}" = 1 ] || [ "${mstatus:-0}" = 0 ] || status=$mstatus
wait "$spid" || true
sleep 0.2; kill "$tpid" 2>/dev/null || true; wait "$tpid" 2>/dev/null || true
port=$(grep -o '"event":"ice.connected","local":"[^"]*' media.log | sed 's/.*://')
echo "consent: $(/usr/bin/python3 "$here/../rtpengine/consent.py" cap.pcap "$port")"
echo "--- aiortc"; cat aiortc.log
echo "--- watrunk"; cat media.log
echo "aiortc-rx: $($helper freq aiortc-rx.wav)"
echo "sink-rx: $($helper freq sink-rx.wav)"
exit "$status"
