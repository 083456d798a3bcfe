"""``Config``: the frozen, typed result of loading a configuration file.

Its fields are generated from the schema (one per option, typed by the option's parser), so an
option is never declared a second time here. A ``Config`` is immutable: a reload builds a new
one and each process swaps its reference, so a half-applied configuration cannot exist.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

from mailgate.config.rules import Route
from mailgate.config.schema import TABLE
from mailgate.config.values import in_networks, split_list

_DATA = ExitStack()


@functools.cache
def data_path(name: str) -> Path:
    """A file or directory shipped in ``mailgate/data`` (read through importlib.resources).

    An installed wheel and a checkout both keep the package on the file system, so the path is
    the real one; a zipped package would be extracted once, for the life of the process (the
    cache keeps one context per name, however often a notice asks for its template).
    """
    return Path(_DATA.enter_context(resources.as_file(resources.files("mailgate.data") / name)))


class _Behaviour:
    """What a configuration answers: paths resolved, routes, actions, lists read."""

    path: Path

    @property
    def spool_path(self) -> Path:
        return (self.path.parent / self.spool_dir).resolve()

    def resolve(self, name: str) -> Path:
        """A path option, resolved against the configuration file's directory."""
        return (self.path.parent / name).resolve()

    def shipped(self, option: str, default: str) -> Path:
        """A data file or directory: the option's path when it is set; else ``default`` beside
        the configuration file when the administrator put one there (``etc/templates`` …);
        else the copy shipped inside the package."""
        value = getattr(self, option)
        if value:
            return self.resolve(value)
        local = self.path.parent / default
        return local.resolve() if local.exists() else data_path(default)

    def template(self, name: str) -> Path | None:
        """Notice template ``name``: from ``Templates`` when set, else ``templates/`` beside
        the configuration file, else the shipped one; None when none of them has it."""
        if self.templates:
            folders = [self.resolve(self.templates)]
        else:
            folders = [self.path.parent / "templates", data_path("templates")]
        return next((f / name for f in folders if (f / name).is_file()), None)

    @property
    def templates_path(self) -> Path:
        return self.shipped("templates", "templates")

    @property
    def signatures_path(self) -> Path:
        return self.shipped("signatures", "avdb")

    @property
    def clamd_socket_path(self) -> Path:
        if self.clamd_socket:
            return self.resolve(self.clamd_socket)
        return self.spool_path / "run" / "clamd.sock"

    @property
    def password_path(self) -> Path:
        if self.password_file:
            return self.resolve(self.password_file)
        return self.spool_path / "run" / "console.password"

    def is_protected(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(domain, mask) for mask in self.protected_domains)

    def is_trusted(self, ip: str) -> bool:
        return in_networks(ip, self.trusted_networks)

    def route_for(self, address: str) -> Route | None:
        return next((r for r in self.routes if r.matches(address)), None)

    def actions(self, status: str) -> tuple[str, ...]:
        """What to do with a message (or object) of anti-virus ``status``."""
        if status == "clean":
            return ("deliver",)
        return getattr(self, f"action_{status}")

    def spam_actions(self, status: str, group: str | None = None) -> tuple[str, ...]:
        """Actions for a spam ``status`` for a recipient of ``group`` (None: everyone)."""
        if status in ("clean", "whitelisted"):
            return ("deliver",)
        for name, wanted, actions in self.group_actions:
            if name == group and wanted == status:
                return actions
        return getattr(self, "action_" + status.replace("-", "_"))

    def group_of(self, recipient: str, sender: str) -> str | None:
        for group in self.groups:
            if group.matches(recipient) or (sender and group.matches(sender)):
                return group.name
        return None

    def list_items(self, sources: list) -> list[str]:
        """The items of a list option, ``file:PATH`` entries read now (so SIGHUP re-reads)."""
        items = []
        for source in sources:
            if source.item.startswith("file:"):
                path = self.resolve(source.item[5:])
                for line in path.read_text(encoding="utf-8").splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line:
                        items.extend(split_list(line))
            else:
                items.append(source.item)
        return items

    @property
    def administrator_address(self) -> str:
        """Who notices tell people to ask: ``Administrator``, else postmaster@Hostname."""
        return self.administrator or f"postmaster@{self.hostname}"

    @property
    def sender_address(self) -> str:
        return self.notify_from or f"postmaster@{self.hostname}"


Config = dataclasses.make_dataclass(
    "Config",
    [("path", Path), ("text", str)] + [(o.attr, o.python_type) for o in TABLE],
    bases=(_Behaviour,),
    frozen=True,
)
Config.__module__ = __name__
Config.__doc__ = "A complete, validated configuration; one field per option of the schema."

# Actions of each preset; an Action* option set in the file overrides its entry.
# Actions of each preset; an Action* option set in the file overrides its entry.
SPAM_PRESETS = {
    "speed": {
        "intensity": "low",
        "spam": ("mark",),
        "probable_spam": ("deliver",),
        "blacklisted": ("block",),
    },
    "recommended": {
        "intensity": "medium",
        "spam": ("quarantine",),
        "probable_spam": ("mark",),
        "blacklisted": ("block",),
    },
    "protection": {
        "intensity": "high",
        "spam": ("block", "quarantine"),
        "probable_spam": ("quarantine",),
        "blacklisted": ("block",),
    },
}

PRESETS = {
    "speed": {
        "infected": ("cure",),
        "suspicious": ("deliver",),
        "encrypted": ("deliver",),
        "corrupted": ("deliver",),
        "unscannable": ("quarantine",),
    },
    "recommended": {
        "infected": ("cure", "quarantine"),
        "suspicious": ("cure", "quarantine"),
        "encrypted": ("deliver",),
        "corrupted": ("deliver",),
        "unscannable": ("quarantine",),
    },
    "protection": {
        "infected": ("block", "quarantine"),
        "suspicious": ("block", "quarantine"),
        "encrypted": ("quarantine",),
        "corrupted": ("quarantine",),
        "unscannable": ("quarantine",),
    },
}
