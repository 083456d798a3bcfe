"""mailgate: an SMTP gateway that scans mail and relays it, with a crash-safe spool."""

__version__ = "0.1.0"
