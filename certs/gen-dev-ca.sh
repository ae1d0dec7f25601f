#!/bin/sh
# Makes a throw-away development CA and a server certificate signed by it (ECDSA P-256), for trying
# watrunk with clients that verify certificates (baresip, stunnel, openssl s_client).
#   sh certs/gen-dev-ca.sh DIR [HOSTNAME [MORE_SANS]]  -> DIR/ca.crt, DIR/server.crt, DIR/server.key
# MORE_SANS: more subjectAltName entries, e.g. IP:10.0.0.1,DNS:sip.example.com
# Never commit the keys it writes. Production needs a certificate from a public CA for the hostname
# configured on the WhatsApp number (Meta validates it).
set -eu
dir=${1:?usage: gen-dev-ca.sh DIR [HOSTNAME]}
host=${2:-localhost}
more=${3:+,$3}
mkdir -p "$dir"; cd "$dir"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=watrunk dev CA" -out ca.crt
openssl ecparam -name prime256v1 -genkey -noout -out server.key
openssl req -new -key server.key -subj "/CN=$host" -out server.csr
printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1,IP:::1%s\n' "$host" "$more" > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -sha256 -extfile san.ext -out server.crt
rm -f server.csr san.ext ca.srl
chmod 600 ca.key server.key
echo "wrote $dir/ca.crt $dir/server.crt $dir/server.key for $host"
