#!/usr/bin/env bash
# Builds the watrunk Debian package with cargo-deb and checks it (docs/packaging.md):
#   scripts/package.sh                   build the .deb, check its contents and its systemd unit
#   scripts/package.sh --install-check   then (as root) install it here, run the installed binary as
#                                        the watrunk user with the installed configuration, check it
#                                        answers OPTIONS, and purge it again (the user too, if the
#                                        package made it)
# The release build is too slow for the test suite; run this by hand or in a release job.
set -euo pipefail
cd "$(dirname "$0")/.."
install_check=no
case "${1:-}" in
  --install-check) install_check=yes ;;
  "") ;;
  *) echo "usage: $0 [--install-check]" >&2; exit 2 ;;
esac
target="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TARGET_DIR="$target"
SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo

fail() { echo "package.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "package.sh: ok: $*"; }

if ! command -v cmake >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cmake
fi
command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked

cargo build --release --locked -p watrunk
bin="$target/release/watrunk"
completions="$target/release/completions"
mkdir -p "$completions"
"$bin" completions bash > "$completions/watrunk.bash"
"$bin" completions zsh > "$completions/_watrunk"
"$bin" completions fish > "$completions/watrunk.fish"
grep -q 'complete -F _watrunk' "$completions/watrunk.bash" || fail "the bash completion has no complete -F"

deb=$(cargo deb -p watrunk --no-build --strip | tail -n 1)
[ -f "$deb" ] || fail "cargo deb printed no package path ($deb)"
ok "built $deb"

# Contents: every file in place, the configuration a conffile.
listing=$(dpkg-deb -c "$deb")
for path in ./usr/bin/watrunk ./etc/watrunk/watrunk.toml ./usr/lib/systemd/system/watrunk.service \
  ./usr/lib/sysusers.d/watrunk.conf ./usr/share/bash-completion/completions/watrunk \
  ./usr/share/zsh/vendor-completions/_watrunk ./usr/share/fish/vendor_completions.d/watrunk.fish \
  ./usr/share/doc/watrunk/configuration.md; do
  grep -q " $path\$" <<<"$listing" || fail "$path is not in the package:
$listing"
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -e "$deb" "$work/control"
grep -qx /etc/watrunk/watrunk.toml "$work/control/conffiles" || fail "watrunk.toml is not a conffile"
grep -q systemd-sysusers "$work/control/postinst" || fail "postinst does not make the user"
ok "contents and conffiles"

# The unit, against the packaged binary (verify checks that ExecStart's program exists).
dpkg-deb -x "$deb" "$work/root"
sed "s|/usr/bin/watrunk|$work/root/usr/bin/watrunk|" "$work/root/usr/lib/systemd/system/watrunk.service" \
  > "$work/watrunk.service"
# verify exits 0 on a key it cannot parse (it only warns): any output is a failure here.
said=$(systemd-analyze verify "$work/watrunk.service" 2>&1) || fail "systemd-analyze verify: $said"
[ -z "$said" ] || fail "systemd-analyze verify watrunk.service: $said"
ok "systemd-analyze verify (no warning); $(systemd-analyze security --offline=true "$work/watrunk.service" 2>&1 | grep -o 'Overall exposure level.*' || true)"

[ "$install_check" = yes ] || exit 0

# Installed on this machine: as root, and put back as it was afterwards.
[ "$(id -u)" = 0 ] || fail "--install-check installs the package: run it as root"
if dpkg -s watrunk >/dev/null 2>&1; then fail "watrunk is installed already; not touching it"; fi
had_user=no
getent passwd watrunk >/dev/null && had_user=yes
cleanup() {
  dpkg --purge watrunk >/dev/null 2>&1 || true
  if [ "$had_user" = no ] && getent passwd watrunk >/dev/null; then
    userdel watrunk || true
    getent group watrunk >/dev/null && groupdel watrunk || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
dpkg -i "$deb"
getent passwd watrunk >/dev/null || fail "no watrunk user after dpkg -i"
[ "$(stat -c %U:%a /var/lib/watrunk)" = watrunk:700 ] || fail "/var/lib/watrunk is $(stat -c %U:%a /var/lib/watrunk)"
said=$(systemd-analyze verify /usr/lib/systemd/system/watrunk.service 2>&1) || fail "systemd-analyze verify (installed): $said"
[ -z "$said" ] || fail "systemd-analyze verify (installed): $said"
ok "dpkg -i: user, state directory, unit"

# The installed binary serves as the watrunk user with the installed configuration, in a private
# network namespace (its [::]:5061 clashes with nothing here).
cat > "$work/serve-check.sh" <<'EOF'
set -eu
ip link set lo up
setpriv --reuid=watrunk --regid=watrunk --init-groups --reset-env \
  env WATRUNK_STATE_DIR=/var/lib/watrunk /usr/bin/watrunk serve --config /etc/watrunk/watrunk.toml \
  > "$1/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  grep -q "SIP over TLS on" "$1/serve.log" && break
  sleep 0.1
done
status=0
/usr/bin/watrunk probe sip:probe@sip.example.com --server 127.0.0.1:5061 \
  --server-name sip.example.com --ca /var/lib/watrunk/sip.example.com.selfsigned.crt \
  > "$1/probe.out" 2>&1 || status=$?
kill -TERM "$pid"
wait "$pid" || status=$?
exit "$status"
EOF
chmod 755 "$work"  # the watrunk user needs nothing there, but the log is written by root's shell
if ! unshare -n -- sh "$work/serve-check.sh" "$work"; then
  cat "$work/serve.log" "$work/probe.out" >&2
  fail "the installed watrunk did not answer OPTIONS"
fi
grep -q '^200 OK' "$work/probe.out" || fail "probe: $(cat "$work/probe.out")"
ok "installed watrunk serve as $(stat -c %U /var/lib/watrunk/sip.example.com.selfsigned.crt) answered OPTIONS: $(grep '^200' "$work/probe.out")"
dpkg -r watrunk
ok "dpkg -r; purging and removing the user it made"
