"""A slot: one place a worker runs in (``receiver-0``, ``scanner-1``, ``clamd-0`` …).

It outlives the processes that fill it: a dead worker's slot keeps its back-off, the time it
may restart at and how often it has, so quick deaths slow the restarts down.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


@dataclass
class Slot:
    role: str
    index: int
    process: subprocess.Popen | None = None
    started: float = 0.0
    backoff: float = 0.0
    restart_at: float = 0.0
    restarts: int = 0
    retired: bool = False

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"
