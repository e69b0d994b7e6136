#!/bin/sh
# A self-signed certificate for a local or staging compose run (deploy/compose.yaml):
# writes deploy/tls/vatra.pem (certificate and key, as HAProxy reads them). Tablets pin
# the server's identity key, not this certificate; a real deployment uses its own.
set -eu
cd "$(dirname "$0")"
name="${1:-localhost}"
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$name" \
    -addext "subjectAltName=DNS:$name" -keyout vatra.key -out vatra.crt
cat vatra.crt vatra.key > vatra.pem
rm vatra.key
chmod 0644 vatra.pem
echo "wrote $(pwd)/vatra.pem for $name"
