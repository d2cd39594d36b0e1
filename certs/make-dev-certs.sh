#!/usr/bin/env bash
# Makes a development CA, a server certificate (localhost, 127.0.0.1, ::1) and a client
# certificate, for trying TLS and mTLS locally. Never use these keys for anything real.
#
#   certs/make-dev-certs.sh [OUT_DIR]        # default: certs/dev
#
# Then: meshgate serve --tls-cert OUT_DIR/server.pem --tls-key OUT_DIR/server.key
# and in Python: flight.connect("grpc+tls://127.0.0.1:8815", tls_root_certs=open("OUT_DIR/ca.pem","rb").read())
set -euo pipefail
out="${1:-$(dirname "$0")/dev}"
client_cn="${CLIENT_CN:-alice}"
mkdir -p "$out"
cd "$out"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=meshgate development CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() { # name cn extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
issue client "$client_cn" "subjectAltName=DNS:$client_cn
extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
chmod 600 ./*.key
echo "development certificates written to $(pwd): ca.pem, server.pem/.key, client.pem/.key (CN=$client_cn)"
