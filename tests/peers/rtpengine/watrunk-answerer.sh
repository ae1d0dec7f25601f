#!/usr/bin/env bash
# ANSWER_CMD for meta-standin.sh in `external` mode: `watrunk media answer` answers rtpengine's ICE-lite
# offer, and a plain RTP tone source/recorder (standin_helper.py plain) plays the local sink: it sends an
# 880 Hz Opus tone to watrunk's local RTP port and records what watrunk relays (rx.wav).
# Env: WATRUNK (binary), OFFER_SDP, ANSWER_SDP (from meta-standin.sh), DTMF=KEYS@SECONDS to send DTMF, SRTP_PROFILES to restrict the DTLS-SRTP profiles we offer
# keys, CORRUPT_FINGERPRINT=1 to answer an offer whose fingerprint was altered (watrunk must then fail).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(dirname "$ANSWER_SDP")
ip=${IP:-198.18.0.1}
offer=$OFFER_SDP
if [ "${CORRUPT_FINGERPRINT:-0}" = 1 ]; then
  # Change the first hex pair of the fingerprint: rtpengine's real certificate no longer matches.
  first=$(grep -i -m1 '^a=fingerprint:sha-256 ' "$OFFER_SDP" | awk '{print substr($2, 1, 2)}')
  new=00; [ "$first" = 00 ] && new=11
  sed -E "s/^(a=fingerprint:sha-256 )../\\1$new/I" "$OFFER_SDP" > "$work/offer-corrupted.sdp"
  offer=$work/offer-corrupted.sdp
fi
printf 'v=0\r\nc=IN IP4 %s\r\nm=audio 41002 RTP/AVP 111\r\n' "$ip" > "$work/sink-peer.sdp"
/usr/bin/python3 "$here/standin_helper.py" plain --bind "$ip:41000" --peer-sdp "$work/sink-peer.sdp" \
  --freq "${SINK_FREQ:-880}" --seconds "${SECS:-6}" --wav "$work/rx.wav" --start immediate --ssrc 1234 \
  > "$work/sink.log" 2>&1 &
sink=$!
status=0
WATRUNK_LOG='warn,dtls=error,webrtc_ice=error' "$WATRUNK" media answer --offer "$offer" --answer-out "$ANSWER_SDP" --media-ip "$ip" ${DTMF:+--dtmf "$DTMF"} ${SRTP_PROFILES:+--srtp-profiles "$SRTP_PROFILES"} \
  --sink "$ip:41000" --local-rtp "$ip:41002" --seconds "$(( ${SECS:-6} + 2 ))" > "$work/media.log" 2>&1 || status=$?
kill "$sink" 2>/dev/null || true
wait "$sink" 2>/dev/null || true
exit "$status"
