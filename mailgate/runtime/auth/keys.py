"""DKIM keys: an RSA private key in PEM (PKCS#1, as dkimpy reads it) and the DNS TXT record
that publishes its public half (RFC 6376 §3.6.1)."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEFAULT_BITS = 2048


def generate(bits: int = DEFAULT_BITS) -> tuple[bytes, str]:
    """(private key PEM, ``v=DKIM1; k=rsa; p=…``)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode("ascii")


def txt_strings(record: str, size: int = 255) -> list[str]:
    """The record cut into character-strings of at most 255 bytes, as a TXT record holds it
    (resolvers join them again)."""
    return [record[i : i + size] for i in range(0, len(record), size)]


def zone_line(domain: str, selector: str, record: str) -> str:
    """The record as a zone-file line, ready to publish."""
    quoted = " ".join(f'"{part}"' for part in txt_strings(record))
    return f"{selector}._domainkey.{domain}. IN TXT ( {quoted} )"
