# Sourced by the aiortc scripts, inside `unshare -n`: puts 198.18.0.1 on lo (aioice skips loopback
# addresses), stops every process listed in `pids` on exit, and captures UDP on lo into cap.pcap.
ip=198.18.0.1
ip link set lo up
ip addr add "$ip/32" dev lo
helper="/usr/bin/python3 $here/../rtpengine/standin_helper.py"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
/usr/bin/tcpdump -i lo -n -U -w cap.pcap udp 2> tcpdump.log & tpid=$!; pids+=($tpid)
for _ in $(seq 50); do grep -q listening tcpdump.log 2>/dev/null && break; sleep 0.1; done
