"""Queue IDs: sortable by arrival, unique without coordination, checked before any path use."""

from __future__ import annotations

import hashlib
import re
import secrets
import time


class InvalidQueueID(ValueError):
    """A string that is not a queue ID (and so must never reach the file system)."""


_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{21}$")
CLAIM_RE = re.compile(r"^([0-9A-HJKMNP-TV-Z]{21})@(\d+)$")


class NotFound(LookupError):
    """No message with that ID in the states looked at."""


def _b32(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_queue_id() -> str:
    """21 characters: microseconds since the epoch (11) then 50 random bits (10).

    Sorting IDs sorts by arrival time; the random part makes them unique across processes
    and hosts sharing a spool without any coordination.
    """
    return _b32(time.time_ns() // 1000, 11) + _b32(secrets.randbits(50), 10)


def derived_id(queue_id: str, number: int) -> str:
    """The ID of copy ``number`` made from ``queue_id``: the same arrival time, a random part
    that depends only on the two, so a worker that makes the copies again names them the same.
    """
    digest = hashlib.blake2b(f"{check_id(queue_id)}/{number}".encode(), digest_size=8).digest()
    return queue_id[:11] + _b32(int.from_bytes(digest, "big") >> 14, 10)


def check_id(queue_id: str) -> str:
    if not isinstance(queue_id, str) or not ID_RE.match(queue_id):
        raise InvalidQueueID(f"invalid queue ID {queue_id!r}")
    return queue_id


def id_time(queue_id: str) -> float:
    """The arrival time encoded in a queue ID, in seconds since the epoch."""
    number = 0
    for char in queue_id[:11]:
        number = number * 32 + _ALPHABET.index(char)
    return number / 1e6
