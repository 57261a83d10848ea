#!/bin/sh
# tls-certs.sh DIR - the certificates tests/test_tls.c needs, made with the openssl
# command into DIR (EC P-256: fast to make). In DIR afterwards:
#   ca.pem ca.key                     the test CA
#   server.pem server.key             server cert for localhost and 127.0.0.1 (by ca)
#   server2.pem server2.key           another one for the same names (SIGHUP reload)
#   expired.pem expired.key           server cert by ca, expired
#   client.pem client.key             client cert by ca
#   other-ca.pem other-ca.key         a second CA
#   other-server.pem other-server.key server cert by other-ca
#   other-client.pem other-client.key client cert by other-ca
#   wrongname.pem wrongname.key       server cert by ca for "elsewhere.invalid" only
set -e
d=$1
cd "$d"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
ca() {
    key "$1"
    openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 3650 -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign 2>/dev/null
}
# cert NAME CA CN DAYS EXT
cert() {
    key "$1"
    openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$3" 2>/dev/null
    printf '%s\n' "$5" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial \
        -out "$1.pem" -days "$4" -extfile "$1.ext" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
SAN='subjectAltName=DNS:localhost,IP:127.0.0.1'
ca ca "mpbroker test CA"
ca other-ca "another CA"
cert server ca localhost 30 "$SAN"
cert server2 ca localhost 30 "$SAN"
cert expired ca localhost -1 "$SAN"
cert client ca "test client" 30 "extendedKeyUsage=clientAuth"
cert other-server other-ca localhost 30 "$SAN"
cert other-client other-ca "other client" 30 "extendedKeyUsage=clientAuth"
cert wrongname ca elsewhere.invalid 30 "subjectAltName=DNS:elsewhere.invalid"
