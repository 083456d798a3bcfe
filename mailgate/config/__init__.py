"""Configuration: one schema (``options.toml``), one loader, one frozen ``Config``.

``values`` and ``rules`` parse option text, ``schema`` reads the option table, ``model`` builds
``Config`` from it, ``loader`` reads files with their line numbers and validates, ``reference``
writes the documentation from the schema. Importers use the names re-exported here.
"""

from mailgate.config.loader import (
    NotRegularFile,
    default_path,
    load,
    open_regular,
    parse,
    reload,
    restart_needed,
    tls_context,
)
from mailgate.config.model import Config, data_path
from mailgate.config.rules import AttachmentRule, Group, ListSource, NextHop, Route, Zone
from mailgate.config.schema import OPTIONS, SECTIONS, TABLE, Option
from mailgate.config.values import (
    BadValue,
    ConfigError,
    client_address,
    in_networks,
    parse_duration,
    parse_networks,
)

__all__ = [
    "OPTIONS",
    "SECTIONS",
    "TABLE",
    "AttachmentRule",
    "BadValue",
    "Config",
    "ConfigError",
    "Group",
    "ListSource",
    "NextHop",
    "NotRegularFile",
    "Option",
    "Route",
    "Zone",
    "client_address",
    "data_path",
    "default_path",
    "in_networks",
    "load",
    "open_regular",
    "parse",
    "parse_duration",
    "parse_networks",
    "reload",
    "restart_needed",
    "tls_context",
]
