"""Building test messages with attachments (the EICAR string, zips, nested messages)."""

from __future__ import annotations

import base64
import io
import quopri
import subprocess
import zipfile
from pathlib import Path

# Assembled at run time so that no file of the project is itself the test virus.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SUSPICIOUS = b"MAILGATE-SUSPICIOUS-" + b"TEST-FILE"
TESTFILES = Path("/usr/share/clamav-testfiles")


def zipped(name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return out.getvalue()


def encrypted_zip(tmp: Path, name: str, data: bytes, password: str = "secret") -> bytes:
    (tmp / name).write_bytes(data)
    target = tmp / "encrypted.zip"
    target.unlink(missing_ok=True)
    subprocess.run(["zip", "-q", "-j", "-P", password, str(target), str(tmp / name)], check=True)
    return target.read_bytes()


def encode(data: bytes, encoding: str) -> bytes:
    """``data`` in a transfer encoding (base64, quoted-printable, else as it is), CRLF lines."""
    if encoding == "base64":
        body = base64.encodebytes(data)
    elif encoding == "quoted-printable":
        body = quopri.encodestring(data)
    else:
        body = data
    return body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def part(
    data: bytes,
    content_type: str = "application/octet-stream",
    filename: str | None = None,
    encoding: str = "base64",
    disposition_raw: str | None = None,
) -> bytes:
    """One MIME body part (headers and encoded body), CRLF line ends."""
    headers = [f"Content-Type: {content_type}"]
    if disposition_raw is not None:
        headers.append(f"Content-Disposition: {disposition_raw}")
    elif filename is not None:
        headers.append(f'Content-Disposition: attachment; filename="{filename}"')
    headers.append(f"Content-Transfer-Encoding: {encoding}")
    body = encode(data, encoding)
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + body


def multipart(
    parts: list[bytes],
    subject: str = "test",
    msgid: str = "av@test",
    boundary: str = "=-=-mailgate-test-=-=",
    to: str = "user@company.com",
    sender: str = "sender@example.org",
    headers_only: bool = False,
) -> bytes:
    head = (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{msgid}>\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\n"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
    ).encode()
    body = b"This is a multi-part message in MIME format.\r\n"
    for p in parts:
        body += f"--{boundary}\r\n".encode() + p + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body if headers_only else head + body


def nested(inner: bytes) -> bytes:
    """A message/rfc822 part carrying ``inner``."""
    return b"Content-Type: message/rfc822\r\n\r\n" + inner


TEXT = part(b"Hello, please find the file attached.\r\n", "text/plain", encoding="7bit")
