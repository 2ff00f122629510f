#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Regenerate the test PKI in this directory: a private CA and a server
# certificate for localhost signed by it. TEST ONLY: the private keys are
# public (checked in), so nothing here may ever protect a real service.
#
# Usage: test/pki/gen.sh   (from anywhere; writes next to this script)

set -eu

cd "$(dirname "$0")"

days=7300    # 20 years: the checked-in files should outlive the project.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The extensions satisfy strict X.509 checking (VERIFY_X509_STRICT, the
# default of ssl.create_default_context() since Python 3.13): a CA needs
# critical basicConstraints and keyUsage, a leaf needs an authority key id.
cat > "$tmp/ca.ext" <<EOF
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF

cat > "$tmp/cert.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = DNS:localhost, DNS:localhost.localdomain, IP:127.0.0.1, IP:::1
EOF

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
    -out ca-key.pem
openssl req -new -key ca-key.pem -subj "/O=ovirt-imageio tests/CN=Test CA" \
    -out "$tmp/ca.csr"
openssl x509 -req -in "$tmp/ca.csr" -signkey ca-key.pem -sha256 \
    -days "$days" -set_serial 1 -extfile "$tmp/ca.ext" -out ca.pem

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out key.pem
openssl req -new -key key.pem -subj "/O=ovirt-imageio tests/CN=localhost" \
    -out "$tmp/cert.csr"
openssl x509 -req -in "$tmp/cert.csr" -CA ca.pem -CAkey ca-key.pem -sha256 \
    -days "$days" -set_serial 2 -extfile "$tmp/cert.ext" -out cert.pem

# The daemon reads the key as its own user in tests; keep it readable so
# a checkout by another user works too. These keys are not secrets.
chmod 0644 ca-key.pem key.pem

openssl verify -CAfile ca.pem cert.pem
