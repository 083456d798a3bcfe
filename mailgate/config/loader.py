"""Reading a configuration file: INI text with line numbers, checked against the schema.

Why not configparser: errors must name ``FILE:LINE``, keys such as ``ForwardRoute`` and
``ListenOn`` may be repeated, and a value like ``100% clean`` must stay as written.

Invariants:
- ``load`` either returns a fully valid ``Config`` or raises ``ConfigError`` listing every
  problem it found; a running process keeps its old ``Config`` when a reload fails.
- Relative paths are resolved against the directory of the configuration file, never against
  the current working directory.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from mailgate.config.model import PRESETS, SPAM_PRESETS, Config
from mailgate.config.schema import OPTIONS, SECTIONS, TABLE, Option
from mailgate.config.values import BadValue, ConfigError, parse_masks, parse_networks

DEFAULT_CONFIG = Path("etc/mailgate.conf")
SYSTEM_CONFIG = Path("/etc/mailgate/mailgate.conf")


def _strip_comment(line: str) -> str:
    m = re.search(r"\s[;#]", line)
    return line[: m.start()] if m else line


def _read_ini(
    text: str, problem: Callable[[int, str], None]
) -> dict[Option, list[tuple[int, str]]]:
    """Every known option set in ``text`` with its (line, value) occurrences."""
    values: dict[Option, list[tuple[int, str]]] = {}
    section: str | None = None
    section_known = True
    last: Option | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.lstrip()[0] in ";#":
            continue
        if raw[0] in " \t" and last is not None:
            values[last].append((lineno, line.strip()))
            continue
        last = None
        stripped = line.strip()
        if stripped.startswith("["):
            name = stripped[1:-1].strip()
            section, section_known = name.lower(), True
            if not stripped.endswith("]"):
                problem(lineno, f"malformed section header {stripped!r}")
                section_known = False
            elif section not in {s.lower() for s in SECTIONS}:
                problem(lineno, f"unknown section [{name}] (known: {', '.join(sorted(SECTIONS))})")
                section_known = False
            continue
        if "=" not in stripped:
            problem(lineno, f"expected 'Key=value', got {stripped!r}")
            continue
        key, _, value = stripped.partition("=")
        key = key.strip()
        if section is None:
            problem(lineno, f"key {key!r} before any [section]")
            continue
        if not section_known:
            continue
        opt = OPTIONS.get((section, key.lower()))
        if opt is None:
            problem(lineno, f"unknown key {key!r} in [{section}]")
            continue
        if opt in values and not opt.repeatable:
            problem(lineno, f"{opt.key} is set twice (first on line {values[opt][0][0]})")
            continue
        values.setdefault(opt, []).append((lineno, value.strip()))
        last = opt
    return values


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The receiver's STARTTLS context from TLSCertificate/TLSKey; None when not configured."""
    if not config.tls_certificate:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.resolve(config.tls_certificate), config.resolve(config.tls_key))
    return context


def parse(text: str, path: Path) -> Config:
    """Parse and validate ``text`` as read from ``path``; raise ConfigError with every problem."""
    problems: list[tuple[int, str]] = []

    def problem(lineno: int, message: str) -> None:
        problems.append((lineno, message))

    values = _read_ini(text, problem)
    fields: dict[str, Any] = {}
    for opt in TABLE:
        fields[opt.attr] = [] if opt.repeatable else opt.parse(opt.default)
        for lineno, value in values.get(opt) or [(0, opt.default)]:
            try:
                item = opt.parse(value)
            except BadValue as exc:
                if lineno == 0:  # pragma: no cover - a shipped default that does not parse
                    raise AssertionError(f"bad default for {opt.key}: {exc}") from exc
                problem(lineno, f"{opt.key}: {exc}")
                continue
            fields[opt.attr] = fields[opt.attr] + item if opt.repeatable else item
        lineno = values[opt][-1][0] if opt in values else 0
        if opt.min is not None and fields[opt.attr] < opt.min:
            problem(lineno, f"{opt.key} must be at least {opt.min}")
        if opt.max is not None and fields[opt.attr] > opt.max:
            problem(lineno, f"{opt.key} must be at most {opt.max}")
    if not fields["hostname"]:
        fields["hostname"] = socket.gethostname()  # never DNS: it may be down at start
    for status, actions in PRESETS[fields["mode"]].items():
        fields[f"action_{status}"] = fields[f"action_{status}"] or actions
    for key, value in SPAM_PRESETS[fields["mode"]].items():
        attr = key if key == "intensity" else f"action_{key}"
        fields[attr] = fields[attr] or value
    config = Config(path=path.resolve(), text=text, **fields)

    def line_of(key: str) -> int:
        opt = next(o for o in TABLE if o.key == key)
        return values[opt][0][0] if opt in values else 0

    if not config.listen:
        problem(line_of("ListenOn"), "ListenOn: at least one address needed")
    if bool(config.tls_certificate) != bool(config.tls_key):
        problem(
            line_of("TLSCertificate") or line_of("TLSKey"), "TLSCertificate and TLSKey go together"
        )

    def check_file(key: str, name: str) -> bool:
        trouble = file_problem(config.resolve(name))
        if trouble:
            problem(line_of(key), f"{key}: {trouble} {name!r}")
        return not trouble

    tls = {"TLSCertificate": config.tls_certificate, "TLSKey": config.tls_key}
    tls_readable = [check_file(key, name) for key, name in tls.items() if name]
    if all(tls.values()) and all(tls_readable):
        try:
            tls_context(config)
        except (OSError, ssl.SSLError) as exc:
            problem(line_of("TLSCertificate"), f"TLSCertificate/TLSKey do not load: {exc}")
    known_groups = {g.name for g in config.groups}
    for name, _status, _actions in config.group_actions:
        if name not in known_groups:
            problem(line_of("GroupAction"), f"GroupAction: no Group named {name!r}")
    for key in (
        "WhitelistSenders",
        "BlacklistSenders",
        "WhitelistRecipients",
        "BlacklistRecipients",
        "WhitelistNetworks",
        "BlacklistNetworks",
        "ClientAllow",
        "ClientDeny",
        "ValidRecipients",
    ):
        opt = next(o for o in TABLE if o.key == key)
        for source in getattr(config, opt.attr):
            if source.item.startswith("file:"):
                check_file(key, source.item[5:])
    try:
        for item in config.list_items(config.whitelist_networks + config.blacklist_networks):
            parse_networks(item)
        for item in config.list_items(
            config.whitelist_senders
            + config.blacklist_senders
            + config.whitelist_recipients
            + config.blacklist_recipients
        ):
            parse_masks(item)
    except BadValue as exc:
        problem(line_of("WhitelistNetworks") or line_of("BlacklistNetworks"), str(exc))
    except OSError:
        pass  # a file that cannot be read was named above, with its line
    for key, sources in (("ClientAllow", config.client_allow), ("ClientDeny", config.client_deny)):
        try:
            for item in config.list_items(sources):
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    if not re.fullmatch(r"[0-9a-fA-F:.*?]+", item):
                        problem(line_of(key), f"{key}: not an address, network or mask: {item!r}")
        except OSError:
            pass
    if config.av_enabled and not config.manage_clamd and not config.clamd_socket:
        problem(line_of("ManageClamd"), "ManageClamd=no needs ClamdSocket= (clamd's socket)")
    if len(os.fsencode(str(config.clamd_socket_path))) > 107:
        problem(
            line_of("ClamdSocket") or line_of("SpoolDir"),
            f"clamd socket path too long for a unix socket: {config.clamd_socket_path}",
        )
    if config.manage_clamd and config.av_enabled:
        try:
            os.listdir(config.signatures_path)
        except (FileNotFoundError, NotADirectoryError):
            problem(line_of("Signatures"), f"Signatures: no such directory {config.signatures}")
        except OSError as exc:
            problem(
                line_of("Signatures"),
                f"Signatures: cannot read {config.signatures}: {exc.strerror}",
            )
    _check_templates(config, line_of("Templates"), problem)
    for key in config.dkim_keys:
        if not config.is_protected(key.domain):
            problem(line_of("SigningKey"), f"SigningKey: {key.domain} is not in ProtectedDomains")
        trouble = signing_key_problem(config.resolve(key.path))
        if trouble:
            problem(line_of("SigningKey"), f"SigningKey: {key.path}: {trouble}")
    if problems:
        problems.sort(key=lambda p: p[0])
        raise ConfigError([f"{path}:{lineno}: {message}" for lineno, message in problems])
    return config


def _check_templates(config: Config, lineno: int, problem: Callable[[int, str], None]) -> None:
    """The administrator's notice templates (``Templates``, else ``templates/`` beside the
    configuration when there is one) must be readable: a notice that cannot be written
    stops the scan of the message it is about, again at every attempt."""
    folder = config.resolve(config.templates) if config.templates else None
    folder = folder or config.path.parent / "templates"
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        if config.templates:
            problem(lineno, f"Templates: no such directory {config.templates!r}")
        return
    except OSError as exc:
        problem(lineno, f"Templates: cannot read {str(folder)!r}: {exc.strerror}")
        return
    for name in names:
        trouble = file_problem(folder / name) if name.endswith(".txt") else None
        if trouble:
            problem(lineno, f"Templates: {trouble} {str(folder / name)!r}")


class NotRegularFile(OSError):
    """A path names a FIFO, a device or a folder where a file is read."""


def open_regular(path: Path | str) -> BinaryIO:
    """``path`` open for reading if it is a regular file, else ``NotRegularFile``. Opened with
    O_NONBLOCK and checked on the open file, not the name, so a FIFO (or a link to one) is
    refused rather than waited on, and a swap between check and open cannot get past it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(0, "not a regular file", str(path))
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file this process can read (``no such file``, ``cannot
    read (…):``, ``not a regular file``); None when it is. Run as User by ``mailgate run``'s
    probe, it finds what root could read and the gateway's user cannot."""
    try:
        open_regular(path).close()
    except FileNotFoundError:
        return "no such file"
    except NotRegularFile:
        return "not a regular file:"
    except OSError as exc:
        return f"cannot read ({exc.strerror}):"
    return None


def signing_key_problem(path: Path) -> str | None:
    """Why a DKIM key file cannot sign (unreadable, not an RSA private key in PEM, readable
    or writable by others); None when it can."""
    try:
        mode = path.stat().st_mode
        key = path.read_bytes()
    except OSError as exc:
        return exc.strerror or str(exc)
    if mode & 0o022 or mode & 0o004:
        return f"mode {mode & 0o777:o}: readable or writable by others (chmod 600)"
    try:
        parse_pem_private_key(key)
    except (UnparsableKeyError, ValueError, IndexError, TypeError) as exc:
        return f"not a PEM RSA private key ({exc})"
    return None


def default_path() -> Path:
    """``etc/mailgate.conf`` of the current directory, else ``/etc/mailgate/mailgate.conf``.

    With neither, the path still names ``etc/mailgate.conf`` (so errors say where to put one)
    and ``load`` runs on the built-in defaults.
    """
    for candidate in (DEFAULT_CONFIG, SYSTEM_CONFIG):
        if candidate.is_file():
            return candidate
    return DEFAULT_CONFIG


def load(path: Path | str | None = None, text_from: Path | None = None) -> Config:
    """Read a configuration file.

    ``text_from`` reads the text from another file (the supervisor's validated snapshot) while
    relative paths and error messages still refer to ``path``.
    """
    if path is None and text_from is None:
        path = default_path()
        if not path.is_file():
            return parse("", path)
    path = Path(path)
    try:
        text = (text_from or path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:0: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}:0: not UTF-8 text ({exc.reason})"]) from None
    return parse(text, path)


def restart_needed(current: Config, new: Config) -> list[str]:
    """The options marked ``reloadable = false`` in the schema that ``new`` changes."""
    return [
        o.key
        for o in TABLE
        if not o.reloadable and getattr(current, o.attr) != getattr(new, o.attr)
    ]


def reload(current: Config, snapshot: Path | None, log) -> Config | None:
    """Re-read ``current``'s file (its text from ``snapshot`` if given) for a SIGHUP.

    Returns the new configuration, or None after logging every problem: the caller keeps
    running on ``current`` (and logs ``config_reloaded`` once it has applied a new one).
    """
    try:
        return load(current.path, text_from=snapshot)
    except ConfigError as exc:
        log.error(
            "config_reload_failed", problems=exc.problems, note="keeping the running configuration"
        )
        return None
