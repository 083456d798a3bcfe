"""Registered domains: the part of a host name someone bought (example.co.uk), by the Public
Suffix List's ICANN section, shipped with the ``publicsuffixlist`` package (no network)."""

from __future__ import annotations

import fnmatch

from publicsuffixlist import PublicSuffixList

_SUFFIXES = PublicSuffixList(only_icann=True)


def registered_domain(host: str) -> str | None:
    """``www.shop.example.co.uk`` → ``example.co.uk``; None for a bare public suffix
    (``co.uk``) or an empty name. Case and a trailing dot do not matter."""
    host = host.lower().strip(".")
    return _SUFFIXES.privatesuffix(host) if host else None


def address_listed(address: str, masks: list[str]) -> bool:
    """Whether ``address`` matches a list entry: a mask with ``@`` is matched against the
    whole address, one without against its domain (lower-case masks; "" matches nothing)."""
    address = address.lower()
    domain = address.rpartition("@")[2]
    return any(fnmatch.fnmatchcase(address if "@" in m else domain, m) for m in masks if address)
