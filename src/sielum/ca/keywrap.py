"""Passphrase encryption of the CA key: PKCS#8 with PBES2, PBKDF2-HMAC-SHA256 and AES-256-CBC.

cryptography's BestAvailableEncryption derives the key with PBKDF2 at 2,048
iterations, far too cheap for a passphrase an attacker who copied ca.key can try
offline, and cryptography offers no way to choose the count for PKCS#8 (only for
PKCS#12 and OpenSSH keys). So the EncryptedPrivateKeyInfo of RFC 5958 / RFC 8018
is put together here: the same structure `openssl pkcs8 -topk8 -v2 aes-256-cbc
-v2prf hmacWithSHA256 -iter 600000` writes, which OpenSSL and cryptography both
read (tests/unit/test_ca.py::test_fail_cheap_kdf_on_the_encrypted_ca_key).
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

# OWASP's figure for PBKDF2-HMAC-SHA256 (2023); about a third of a second per load here.
KDF_ITERATIONS = 600_000
SALT_BYTES = 16
MIN_PASSPHRASE_CHARS = 12

_PBES2 = "1.2.840.113549.1.5.13"
_PBKDF2 = "1.2.840.113549.1.5.12"
_HMAC_WITH_SHA256 = "1.2.840.113549.2.9"
_AES_256_CBC = "2.16.840.1.101.3.4.1.42"


def encrypt_private_key(
    key: ec.EllipticCurvePrivateKey, passphrase: bytes, *, iterations: int = KDF_ITERATIONS
) -> bytes:
    """The key as an ENCRYPTED PRIVATE KEY PEM, readable by load_pem_private_key and OpenSSL."""
    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt, iv = os.urandom(SALT_BYTES), os.urandom(16)
    derived = PBKDF2HMAC(
        algorithm=hashes.SHA256(), length=32, salt=salt, iterations=iterations
    ).derive(passphrase)
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(derived), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()

    prf = _sequence(_oid(_HMAC_WITH_SHA256), _NULL)
    kdf = _sequence(_oid(_PBKDF2), _sequence(_octets(salt), _integer(iterations), prf))
    scheme = _sequence(_oid(_AES_256_CBC), _octets(iv))
    algorithm = _sequence(_oid(_PBES2), _sequence(kdf, scheme))
    der = _sequence(algorithm, _octets(encrypted))
    body = base64.encodebytes(der).decode("ascii").replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
        + "".join(f"{line}\n" for line in lines)
        + "-----END ENCRYPTED PRIVATE KEY-----\n"
    ).encode("ascii")


# The few DER encodings the structure needs.

_NULL = b"\x05\x00"


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + value


def _sequence(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _octets(value: bytes) -> bytes:
    return _tlv(0x04, value)


def _integer(value: int) -> bytes:
    # Non-negative: one leading zero byte keeps the top bit from reading as a sign.
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _oid(dotted: str) -> bytes:
    arcs = [int(arc) for arc in dotted.split(".")]
    encoded = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        encoded += bytes(reversed(chunk))
    return _tlv(0x06, bytes(encoded))
