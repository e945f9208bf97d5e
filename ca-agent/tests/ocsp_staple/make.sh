#!/bin/sh
# Generator of the OCSP test material, run by tests/ocsp_staple.rs in a fresh directory (the
# responses carry the current time, so they are made at test time, not checked in).
#
# Two CAs, "CA One" and "CA Two"; each issued a leaf with the same serial 0x1001 (serials are
# per issuer). "Shared OCSP Responder" is a delegated responder certificate issued by CA One
# (id-kp-OCSPSigning) that also answers for CA Two, as a responder serving several CAs does.
# openssl ocsp acts as the responder.
set -eu
ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
        -out "$1.crt" -subj "/CN=$2" -days 10 \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign,digitalSignature 2>/dev/null
}
issue() { # name issuer serial extensions
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" \
        -out "$1.csr" -subj "/CN=$1" 2>/dev/null
    printf "$4" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -set_serial "$3" -days 5 \
        -out "$1.crt" -extfile "$1.ext" 2>/dev/null
}
ca ca1 "CA One"
ca ca2 "CA Two"
issue leaf1 ca1 0x1001 'basicConstraints=CA:FALSE\n'
issue leaf2 ca2 0x1001 'basicConstraints=CA:FALSE\n'
issue responder ca1 0x77 \
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=OCSPSigning\n'
for c in ca1 ca2 leaf1 leaf2; do openssl x509 -in "$c.crt" -outform DER -out "$c.der"; done
printf 'V\t301231000000Z\t\t1001\tunknown\t/CN=leaf\n' > index.txt

# Requests (SHA-1 CertID, the default; and SHA-256).
openssl ocsp -issuer ca1.crt -cert leaf1.crt -reqout req1.der -no_nonce
openssl ocsp -issuer ca2.crt -cert leaf2.crt -reqout req2.der -no_nonce
openssl ocsp -sha256 -issuer ca1.crt -cert leaf1.crt -reqout req1-sha256.der -no_nonce

respond() { # out CA-for-CertID signer request [extra]
    out=$1 caf=$2 signer=$3 req=$4
    shift 4
    openssl ocsp -index index.txt -CA "$caf.crt" -rsigner "$signer.crt" -rkey "$signer.key" \
        -reqin "$req" -respout "$out" "$@" 2>/dev/null
}
# Legitimate: about leaf1 (CA One's CertID), by the delegated responder and by CA One itself.
respond good-delegated.der ca1 responder req1.der -ndays 1
respond good-by-issuer.der ca1 ca1 req1.der -ndays 1
respond good-sha256.der ca1 responder req1-sha256.der -ndays 1
# Same serial, CA Two's CertID, signed by a key CA One trusts: the responder, or CA One.
respond other-issuer-delegated.der ca2 responder req2.der -ndays 1
respond other-issuer-by-ca1.der ca2 ca1 req2.der -ndays 1
# Same serial, signed by CA Two itself.
respond other-issuer-by-ca2.der ca2 ca2 req2.der -ndays 1
# No nextUpdate at all.
respond no-next-update.der ca1 responder req1.der
