"""The one line ``mailgate run`` prints once it is serving: where everything is.

An administrator who just started the gateway wants to know, without reading the log, where
it listens, where mail goes next, where the spool and the log are, which clamd it uses and
how to reach the console. Nothing here comes from a client: every value is configuration.
"""

from __future__ import annotations

from mailgate.config import Config, passwords
from mailgate.runtime import log as logmod


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def next_hops(config: Config) -> str:
    if not config.routes:
        return "MX of each recipient's domain"
    shown = [f"{r.mask} → {', '.join(str(h) for h in r.hops)}" for r in config.routes[:3]]
    more = f" (+{len(config.routes) - 3} routes)" if len(config.routes) > 3 else ""
    return "; ".join(shown) + more


def console(config: Config) -> str:
    parts = []
    if config.admin_listen and passwords.stored(config):
        parts.append(f"console http://{_address(*config.admin_listen)}/")
    elif config.admin_listen:
        url = f"http://{_address(*config.admin_listen)}/"
        parts.append(f"console {url} (no login until a password is set: mailgate passwd)")
    else:
        parts.append("console off ([smtpgw.admin] Listen is empty)")
    if config.metrics_listen:
        parts.append(f"metrics http://{_address(*config.metrics_listen)}/metrics")
    return ", ".join(parts)


def line(config: Config, managed_clamd: bool) -> str:
    log_file = logmod.file_for(config)
    if not config.av_enabled:
        clamd = "anti-virus off"
    else:
        owner = "managed" if managed_clamd else "external"
        clamd = f"clamd {config.clamd_socket_path} ({owner})"
    return (
        f"mailgate ready: listening on {', '.join(_address(h, p) for h, p in config.listen)}"
        f" | next hop {next_hops(config)}"
        f" | spool {config.spool_path}"
        f" | log {log_file or 'standard error only'}"
        f" | {clamd}"
        f" | {console(config)}"
    )
