#!/bin/sh
# One-shot service of the docker-compose example (tls-init): makes a self-signed certificate for
# mailwarden's TLS listeners in the folder given, unless one is there already, readable by
# mailwarden's user (uid 10025) only. Replace it with a real certificate for production.
set -eu
dir=$1
name=${MAIL_HOSTNAME:-mx.example.com}
if [ ! -s "$dir/tls.crt" ] || [ ! -s "$dir/tls.key" ]; then
    openssl req -x509 -newkey rsa:2048 -sha256 -days 825 -nodes \
        -subj "/CN=$name" -addext "subjectAltName=DNS:$name" \
        -keyout "$dir/tls.key" -out "$dir/tls.crt"
fi
chown 10025:10025 "$dir/tls.key" "$dir/tls.crt"
chmod 0400 "$dir/tls.key"
chmod 0444 "$dir/tls.crt"
