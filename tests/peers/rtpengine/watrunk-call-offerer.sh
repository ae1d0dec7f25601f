#!/usr/bin/env bash
# A business-initiated call end to end: `watrunk call` places it over TLS to a Meta-shaped SIP UAS
# (meta_sip_uas.py: 407 with SHA-256 + MD5 challenges, Record-Route, BYE with the call duration)
# whose media relay is rtpengine (ICE-lite, DTLS-SRTP toward watrunk, plain RTP toward a 440 Hz
# tone source). watrunk's sink plays 880 Hz and records; both recordings are checked by frequency.
#   unshare -n -- bash watrunk-call-offerer.sh WORKDIR        (root; env WATRUNK, SECS=4, IP=198.18.0.1)
# Prints PASS/FAIL lines; exit 0 = all passed. Output in WORKDIR: events.log, call.log, uas.log, *.wav.
set -u
here=$(cd "$(dirname "$0")" && pwd)
work=$1; mkdir -p "$work"; cd "$work"
rm -f ./*.sdp ./*.wav events.log
PY=/usr/bin/python3; H="$PY $here/standin_helper.py"
IP=${IP:-198.18.0.1}; SECS=${SECS:-4}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
ip link set lo up
ip addr add "$IP/32" dev lo 2>/dev/null || true
/usr/bin/rtpengine --foreground --log-stderr --table=-1 --interface="$IP" --listen-ng=127.0.0.1:2223 \
  --port-min=30000 --port-max=30099 --log-level=6 > rtpengine.log 2>&1 & pids+=($!)
for i in $(seq 50); do $PY "$here/ng.py" ping >/dev/null 2>&1 && break; sleep 0.1; done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj "/CN=$IP" \
  -addext "subjectAltName=IP:$IP" -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" -keyout meta.key -out meta.crt > openssl.log 2>&1
echo "meta-gave-us-this" > password
$H plain --bind "$IP:40000" --peer-sdp plain-offer.sdp --freq 440 --seconds "$((SECS + 1))" --wav plain-rx.wav \
  --start immediate --ssrc 4208138518 --wait 30 > plain.log 2>&1 & plain=$!; pids+=($plain)
$PY "$here/meta_sip_uas.py" --listen "$IP:5061" --cert meta.crt --key meta.key --password meta-gave-us-this \
  --plain "$IP:40000" --work "$PWD" --seconds "$((SECS + 1))" > uas.log 2>&1 & uas=$!; pids+=($uas)
for i in $(seq 50); do grep -q listening uas.log 2>/dev/null && break; sleep 0.1; done
$H plain --bind "$IP:41000" --peer-sdp sink-peer.sdp --freq 880 --seconds "$SECS" --wav rx.wav \
  --start immediate --ssrc 1234 --wait 30 > sink.log 2>&1 & sink=$!; pids+=($sink)
(
  for i in $(seq 300); do
    port=$(grep -m1 '"call.answered"' events.log 2>/dev/null | sed -n 's/.*"local_rtp":"[^"]*:\([0-9]*\)".*/\1/p' || true)
    [ -n "$port" ] && { printf 'v=0\r\nc=IN IP4 %s\r\nm=audio %s RTP/AVP 111\r\n' "$IP" "$port" > sink-peer.sdp; exit 0; }
    sleep 0.05
  done
) &
WATRUNK_LOG='info,dtls=error,webrtc_ice=error' timeout 40 "$WATRUNK" call --from +15550001111 --to +12195550714 \
  --hostname localhost --tls "$IP:5062" --state-dir "$PWD/state" --api off --meta-server "$IP:5061" --tls-ca meta.crt \
  --sip-password-file password --media-ip "$IP" --sink "$IP:41000" --events - > events.log 2> call.log
crc=$?
wait "$uas"; urc=$?
wait "$sink" 2>/dev/null; wait "$plain" 2>/dev/null
rc=0
[ "$crc" = 0 ] && echo "PASS watrunk call exited 0" || { echo "FAIL watrunk call exited $crc"; rc=1; }
[ "$urc" = 0 ] && echo "PASS Meta-shaped UAS: call ran, BYE answered 200" || { echo "FAIL Meta-shaped UAS exited $urc"; rc=1; }
grep -q "credentials ok: username=15550001111 algorithm=SHA-256" uas.log \
  && echo "PASS 407 answered with SHA-256, username without '+'" || { echo "FAIL digest: $(grep -m1 -i 'cred' uas.log)"; rc=1; }
grep '"call.ended"' events.log | grep -q '"server":{"calls":0,"media_conns":0,"media_routes":0}' \
  && echo "PASS call.ended: the server is back to idle (no call, media route or connection left)" \
  || { echo "FAIL call.ended: $(grep '"call.ended"' events.log)"; rc=1; }
grep -q '^a=ice-lite' meta-answer.sdp && echo "INFO rtpengine answered ICE-lite" || echo "INFO rtpengine answered full ICE"
near() { awk -v f="$1" -v e="$2" 'BEGIN{exit !(f > e*0.97 && f < e*1.03)}'; }
chk() {
  if [ ! -s "$2" ]; then echo "FAIL $1: no recording"; rc=1; return; fi
  r=$($H freq "$2" --skip 1); f=$(echo "$r" | sed -n 's/^freq=\([0-9.]*\).*/\1/p'); rms=$(echo "$r" | sed -n 's/.*rms=\([0-9.]*\).*/\1/p')
  if near "${f:-0}" "$3" && awk -v r="${rms:-0}" 'BEGIN{exit !(r > 0.05)}'; then echo "PASS $1: $r"; else echo "FAIL $1 (want $3 Hz): $r"; rc=1; fi
}
chk "watrunk->rtpengine->plain (recorded on the plain side)" plain-rx.wav 880
chk "plain->rtpengine->watrunk (recorded by the sink)" rx.wav 440
exit $rc
