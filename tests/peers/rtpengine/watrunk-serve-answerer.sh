#!/usr/bin/env bash
# ANSWER_CMD for meta-standin.sh in `external` mode, through SIP: `watrunk serve` takes a Meta-shaped
# INVITE over TLS (meta_sip_uac.py) that carries rtpengine's ICE-lite offer, challenges it (407,
# SHA-256 + MD5), answers it, and relays the call's audio to a local sink: a plain RTP tone source
# and recorder (standin_helper.py plain, 880 Hz) that learns the call's local RTP port from the
# call.answered event. Env: WATRUNK, OFFER_SDP, ANSWER_SDP (from meta-standin.sh), SECS, KEY_LOG
# (optional: watrunk's --key-log file), API (the control API's address; off by default),
# EXTRA_SERVE_ARGS (more flags for serve, split on spaces).
# Output beside ANSWER_SDP: events.log (watrunk's JSON events), serve.log, uac.log, sink.log, rx.wav.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(dirname "$ANSWER_SDP")
ip=${IP:-198.18.0.1}
number=+15550001111
echo "meta-gave-us-this" > "$work/password"
rm -f "$work/sink-peer.sdp" "$work/events.log"
WATRUNK_LOG='info,dtls=error,webrtc_ice=error' "$WATRUNK" serve --hostname localhost --tls "$ip:5061" --api "${API:-off}" \
  --state-dir "$work/state" --number "$number" --challenge --digest-algorithm both \
  --sip-password-file "$work/password" --media-ip "$ip" --sink "$ip:41000" --events - ${EXTRA_SERVE_ARGS:-} \
  ${KEY_LOG:+--key-log "$KEY_LOG"} \
  > "$work/events.log" 2> "$work/serve.log" &
serve=$!
trap 'kill $serve 2>/dev/null || true' EXIT
for i in $(seq 100); do grep -q "SIP over TLS on" "$work/serve.log" 2>/dev/null && break; sleep 0.1; done
/usr/bin/python3 "$here/standin_helper.py" plain --bind "$ip:41000" --peer-sdp "$work/sink-peer.sdp" \
  --freq "${SINK_FREQ:-880}" --seconds "${SECS:-6}" --wav "$work/rx.wav" --start immediate --ssrc 1234 --wait 30 \
  > "$work/sink.log" 2>&1 &
sink=$!
# The sink learns the call's local RTP port L from call.answered, as a voice agent would.
(
  for i in $(seq 300); do
    port=$(grep -m1 '"call.answered"' "$work/events.log" 2>/dev/null | sed -n 's/.*"local_rtp":"[^"]*:\([0-9]*\)".*/\1/p' || true)
    [ -n "$port" ] && { printf 'v=0\r\nc=IN IP4 %s\r\nm=audio %s RTP/AVP 111\r\n' "$ip" "$port" > "$work/sink-peer.sdp"; exit 0; }
    sleep 0.05
  done
) &
status=0
/usr/bin/python3 "$here/meta_sip_uac.py" --target "$ip:5061" --number "$number" --offer "$OFFER_SDP" \
  --answer-out "$ANSWER_SDP" --password "meta-gave-us-this" --seconds "$(( ${SECS:-6} + 1 ))" > "$work/uac.log" 2>&1 || status=$?
for i in $(seq 50); do grep -q '"call.ended"' "$work/events.log" && break; sleep 0.1; done
# The sink writes its recording when its --seconds are over; on a loaded machine it may have
# started late, so it gets up to 5 s more before it is stopped.
for i in $(seq 50); do kill -0 "$sink" 2>/dev/null || break; sleep 0.1; done
kill "$sink" 2>/dev/null || true
wait "$sink" 2>/dev/null || true
exit "$status"
