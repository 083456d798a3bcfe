"""The option schema: ``options.toml`` (shipped in this package) read into ``Option`` objects.

Every option is declared once, there: section, key, attribute, value type, default, bounds,
whether a reload can change it, and its one-line documentation. The loader, the frozen
``Config`` class, ``check-config`` and the generated reference (``docs/configuration.md`` and
the comments of the sample ``etc/mailgate.conf``) all read this one table.

Invariant: every ``type`` names a parser ``parse_<type>`` of ``values`` or ``rules``, and every
default parses (the loader asserts it), so a missing key can never yield an invalid value.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from mailgate.config import rules, values

PARSERS: dict[str, Callable[[str], Any]] = {
    name[len("parse_") :]: getattr(module, name)
    for module in (values, rules)
    for name in dir(module)
    if name.startswith("parse_")
}


@dataclass(frozen=True)
class Option:
    """One key of one section. ``attr`` is the ``Config`` field it fills."""

    section: str
    key: str
    attr: str
    type: str
    default: str
    repeatable: bool = False
    min: int | None = None
    max: int | None = None
    reloadable: bool = True
    shown: str = ""
    doc: str = ""

    @property
    def parse(self) -> Callable[[str], Any]:
        return PARSERS[self.type]

    @property
    def python_type(self) -> Any:
        """The Config field's type: the parser's declared return type."""
        return typing.get_type_hints(self.parse)["return"]


def _read() -> list[Option]:
    text = resources.files(__package__).joinpath("options.toml").read_text(encoding="utf-8")
    table = []
    for section, keys in tomllib.loads(text).items():
        for key, fields in keys.items():
            if fields["type"] not in PARSERS:
                raise AssertionError(f"options.toml: {key}: no parser for type {fields['type']!r}")
            table.append(Option(section=section, key=key, **fields))
    return table


TABLE: tuple[Option, ...] = tuple(_read())
OPTIONS = {(o.section.lower(), o.key.lower()): o for o in TABLE}
SECTIONS = {o.section for o in TABLE}


def option(section: str, key: str) -> Option:
    return OPTIONS[(section.lower(), key.lower())]
