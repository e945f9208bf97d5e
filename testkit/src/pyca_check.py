# pyca/cryptography (strict DER parsing in Rust, its own signature checks) as a second
# independent reader of the artifacts the pkilint checks name. Reads a JSON list of
# {"kind": "cert" | "issued_by" | "crl" | "ocsp", "files": [...]} on stdin and prints a JSON
# list of error messages (null when the artifact passed), in the same order.
import json
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp


def read(path):
    with open(path, "rb") as f:
        return f.read()


def load_cert(path):
    data = read(path)
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def touch_cert(c):
    for _ in c.extensions:
        pass
    return (c.subject, c.issuer, c.serial_number, c.not_valid_before_utc, c.not_valid_after_utc)


def verify_sig(key, signature, data, hash_alg):
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(hash_alg))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), hash_alg)
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(signature, data)
    else:
        raise ValueError("unexpected key type %r" % type(key))


def sibling_issuers(path):
    """Issuer certificates written next to an artifact (issuing.pem, ca.pem, root.pem)."""
    d = os.path.dirname(path)
    out = []
    for name in ("issuing.pem", "ca.pem", "root.pem"):
        p = os.path.join(d, name)
        if os.path.exists(p):
            out.append(load_cert(p))
    return out


def check_crl(path):
    data = read(path)
    if data.startswith(b"-----"):
        crl = x509.load_pem_x509_crl(data)
    else:
        crl = x509.load_der_x509_crl(data)
    for _ in crl.extensions:
        pass
    for r in crl:
        for _ in r.extensions:
            pass
    for issuer in sibling_issuers(path):
        if issuer.subject == crl.issuer:
            if not crl.is_signature_valid(issuer.public_key()):
                raise ValueError("CRL signature does not verify with its issuer")
            break


def check_ocsp(path):
    r = ocsp.load_der_ocsp_response(read(path))
    if r.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return
    for _ in r.extensions:
        pass
    singles = list(r.responses)
    if not singles:
        raise ValueError("no SingleResponse")
    for s in singles:
        (s.certificate_status, s.this_update_utc, s.next_update_utc, s.serial_number)
    keys = [c.public_key() for c in r.certificates]
    if not keys:
        for issuer in sibling_issuers(path):
            kh = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
            if r.responder_key_hash == kh:
                keys.append(issuer.public_key())
    if keys:
        verify_sig(keys[0], r.signature, r.tbs_response_bytes, r.signature_hash_algorithm)


def check(item):
    kind, files = item["kind"], item["files"]
    if kind == "cert":
        touch_cert(load_cert(files[0]))
    elif kind == "issued_by":
        issuer, subject = load_cert(files[0]), load_cert(files[1])
        touch_cert(subject)
        subject.verify_directly_issued_by(issuer)
    elif kind == "crl":
        check_crl(files[0])
    elif kind == "ocsp":
        check_ocsp(files[0])
    else:
        raise ValueError("unknown kind %r" % kind)


def main():
    results = []
    for item in json.load(sys.stdin):
        try:
            check(item)
            results.append(None)
        except Exception as e:  # every failure is reported, none stops the others
            results.append("%s: %s" % (type(e).__name__, e))
    json.dump(results, sys.stdout)


main()
