#!/usr/bin/env bash
# baresip (its own SIP/TLS, ICE, DTLS-SRTP and Opus) against `watrunk serve`, both ways:
#   in:  baresip (ausine 440 Hz) dials sip:+15550001111@127.0.0.1:5061;transport=tls; watrunk answers
#        and relays to its sink, which plays 880 Hz and records; baresip hangs up after a few seconds.
#   echo: like in, with examples/voice-agent/echo_agent.py as the sink: baresip hears its own 440 Hz.
#   out: `watrunk call` asks the running server (control API) to call baresip (auto-answer, 440 Hz);
#        baresip records what it hears, watrunk hangs up after a few seconds.
#   unshare -n -- bash watrunk-baresip.sh WORKDIR in|echo|out       (root; env WATRUNK)
# Prints PASS/FAIL lines; exit 0 = all passed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
work=$1; dir=$2; mkdir -p "$work"; cd "$work"; rm -rf bs ./*.wav events.log sink-peer.sdp
PY=/usr/bin/python3; H="$PY $root/tests/peers/rtpengine/standin_helper.py"
IP=198.18.0.1
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
ip link set lo up
ip addr add "$IP/32" dev lo 2>/dev/null || true
sh "$root/certs/gen-dev-ca.sh" pki localhost > /dev/null 2>&1
cat pki/server.crt pki/server.key > pki/server.pem
WATRUNK_LOG='info,dtls=error,webrtc_ice=error' "$WATRUNK" serve --hostname 127.0.0.1 --tls 127.0.0.1:5061 \
  --cert pki/server.crt --key pki/server.key --tls-ca pki/ca.crt --state-dir "$PWD/state" --api 127.0.0.1:8061 \
  --number +15550001111 --media-ip "$IP" --sink "$IP:41000" --meta-server 127.0.0.1:5163 --meta-domain 127.0.0.1 \
  --events - > events.log 2> serve.log & pids+=($!)
for i in $(seq 100); do grep -q "control API on" serve.log 2>/dev/null && break; sleep 0.1; done
if [ "$dir" = echo ]; then
  $PY "$root/examples/voice-agent/echo_agent.py" --listen "$IP:41000" --delay-ms 200 --seconds 12 > sink.log 2>&1 & sink=$!; pids+=($sink)
else
  $H plain --bind "$IP:41000" --peer-sdp sink-peer.sdp --freq 880 --seconds 5 --wav rx.wav --start immediate \
    --ssrc 1234 --wait 30 > sink.log 2>&1 & sink=$!; pids+=($sink)
fi
(
  for i in $(seq 400); do
    port=$(grep -m1 '"call.answered"' events.log 2>/dev/null | sed -n 's/.*"local_rtp":"[^"]*:\([0-9]*\)".*/\1/p' || true)
    [ -n "$port" ] && { printf 'v=0\r\nc=IN IP4 %s\r\nm=audio %s RTP/AVP 111\r\n' "$IP" "$port" > sink-peer.sdp; exit 0; }
    sleep 0.05
  done
) &
mkdir -p bs/snd
user=alice; mode=manual; [ "$dir" = out ] && { user=bob; mode=auto; }
sed -e "s#@SIP_PORT@#5162#; s#@CERT@#$PWD/pki/server.pem#; s#@CAFILE@#$PWD/pki/ca.crt#; s#@FREQ@#440#" \
    -e "s#@SNDDIR@#$PWD/bs/snd#; s#@RTP_PORTS@#20000-20099#; s#@CTRL_PORT@#4444#" \
    -e "s#^net_interface.*#net_interface\t\t$IP#" "$here/config.template" > bs/config
echo "<sip:$user@127.0.0.1;transport=tls>;regint=0;medianat=ice;mediaenc=dtls_srtp;audio_codecs=opus/48000/1;answermode=$mode" > bs/accounts
if [ "$dir" != out ]; then
  timeout 30 baresip -f bs -v -s -e "/dial sip:+15550001111@127.0.0.1:5061;transport=tls" -t 7 > baresip.log 2>&1
else
  baresip -f bs -v > baresip.log 2>&1 & bpid=$!; pids+=($bpid)
  for i in $(seq 50); do grep -q 'baresip is ready' baresip.log 2>/dev/null && break; sleep 0.1; done
  "$WATRUNK" call --from +15550001111 --to bob --api 127.0.0.1:8061 --hangup-after 5 > call.log 2>&1
  sleep 1
  kill "$bpid" 2>/dev/null; wait "$bpid" 2>/dev/null
fi
[ "$dir" = echo ] && kill "$sink" 2>/dev/null
wait "$sink" 2>/dev/null
for i in $(seq 50); do grep -q '"call.ended"' events.log && break; sleep 0.1; done
rc=0
grep '"call.ended"' events.log | grep -q '"server":{"calls":0,"media_conns":0,"media_routes":0}' \
  && echo "PASS call.ended: the server is back to idle" || { echo "FAIL call.ended: $(grep '"call.ended"' events.log)"; rc=1; }
near() { awk -v f="$1" -v e="$2" 'BEGIN{exit !(f > e*0.97 && f < e*1.03)}'; }
chk() {
  if [ -z "$2" ] || [ ! -s "$2" ]; then echo "FAIL $1: no recording"; rc=1; return; fi
  r=$($H freq "$2" --skip 1); f=$(echo "$r" | sed -n 's/^freq=\([0-9.]*\).*/\1/p'); rms=$(echo "$r" | sed -n 's/.*rms=\([0-9.]*\).*/\1/p')
  if near "${f:-0}" "$3" && awk -v r="${rms:-0}" 'BEGIN{exit !(r > 0.05)}'; then echo "PASS $1: $r"; else echo "FAIL $1 (want $3 Hz): $r"; rc=1; fi
}
if [ "$dir" = echo ]; then
  grep -q "new call from" sink.log && echo "PASS the echo agent heard the call" || { echo "FAIL the echo agent heard nothing"; rc=1; }
  chk "baresip->watrunk->echo agent->watrunk->baresip (recorded by baresip)" "$(ls bs/snd/*-dec.wav 2>/dev/null | head -1)" 440
else
  chk "baresip->watrunk->sink (recorded by the sink)" rx.wav 440
  chk "sink->watrunk->baresip (recorded by baresip)" "$(ls bs/snd/*-dec.wav 2>/dev/null | head -1)" 880
fi
exit $rc
