"""Statistics: counters and histograms each process keeps alone, summed by whoever reads them.

Workers never talk to each other, so each one writes its own numbers into memory-mapped files
(prometheus_client's multiprocess mode) under ``stats/live/`` of the spool; a reader
(``mailgate stats``, the metrics endpoint, the supervisor's SIGUSR1) adds up every file.

Invariants:
- "Since start" is what ``stats/live/`` and ``stats/retired.json`` hold: the supervisor folds
  the previous run's into ``stats/history.json`` before any worker starts, so totals = history
  + this run and nothing counted is ever lost by a restart (a worker killed mid-message keeps
  what it wrote).
- A dead worker's files are retired by the supervisor: their sums go into
  ``stats/retired.json`` (part of "since start") and the files go, so a worker that keeps
  dying costs no 2 MiB of spool per restart. Readers take the retired sums and skip the live
  files of the pids it names, so a reader racing a retirement counts a worker once.
- Queue depths are not counted but read from the spool when asked, so they cannot drift.
- Only counter and histogram samples are folded; every labelled metric has one label.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from collections import defaultdict
from pathlib import Path

from mailgate.runtime import log as logmod
from mailgate.spool import STATES, Spool, write_file_replacing

PREFIX = "mailgate_"
ENV = "PROMETHEUS_MULTIPROC_DIR"
SCAN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)

# name: (kind, help, label) -- the contract of ``mailgate stats --json`` and of /metrics
METRICS = {
    "received_messages": ("counter", "Messages accepted (250 after DATA)", None),
    "received_bytes": ("counter", "Bytes of accepted messages", None),
    "rejected": ("counter", "SMTP refusals, by reason", "reason"),
    "scanned": ("counter", "Messages scanned", None),
    "virus_status": ("counter", "Scanned messages by anti-virus status", "status"),
    "spam_status": ("counter", "Scanned messages by spam status", "status"),
    "actions": ("counter", "Policy actions carried out", "action"),
    "quarantined": ("counter", "Copies put in quarantine, by status", "status"),
    "ichecker_hits": ("counter", "Objects iChecker knew to be clean (not sent to clamd)", None),
    "ichecker_lookups": ("counter", "Objects looked up in iChecker", None),
    "delivered": ("counter", "Recipients delivered to the next hop", None),
    "deferred": ("counter", "Delivery attempts deferred", None),
    "bounced": ("counter", "Recipients that failed permanently", None),
    "notifications": ("counter", "Notices queued, by kind", "kind"),
    "scan_seconds": ("histogram", "Time to scan one message", None),
    "latency_seconds": ("histogram", "From acceptance to delivery", None),
    "cluster_fallbacks": ("counter", "Calls this node answered alone: Redis did not", None),
}


class _Metrics:
    """The live metric objects of this process (created once, by ``metrics()``)."""

    def __init__(self):
        from prometheus_client import Counter, Histogram

        for name, (kind, text, label) in METRICS.items():
            labels = (label,) if label else ()
            if kind == "counter":
                metric = Counter(PREFIX + name, text, labels, registry=None)
            else:
                buckets = SCAN_BUCKETS if name == "scan_seconds" else LATENCY_BUCKETS
                metric = Histogram(PREFIX + name, text, labels, registry=None, buckets=buckets)
            setattr(self, name, metric)


_metrics: _Metrics | None = None


def start(spool: Spool) -> None:
    """Make this process count into the spool's ``stats/live/`` (call before ``metrics()``).

    prometheus_client's multiprocess mode is chosen by ``PROMETHEUS_MULTIPROC_DIR`` when the
    library is first imported; the supervisor sets it in every worker's environment, and a
    worker started by hand gets it here, before the first import.
    """
    live = spool.stats_path("live")
    live.mkdir(parents=True, exist_ok=True, mode=0o700)
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(live):
        raise RuntimeError(f"prometheus_client was imported before {ENV} was set")
    if _reserve(live):
        os.environ[ENV] = str(live)
    else:  # no room for this process's counters: they stay in memory rather than crash it
        os.environ.pop(ENV, None)
        logmod.get().error("statistics_in_memory", why="no room under stats/live")
    global _metrics
    _metrics = None


# The files prometheus_client's multiprocess mode maps for a process's counters and
# histograms (``{kind}_{pid}.db``, prometheus_client < 0.27, pinned). It creates them sparse
# and writes through mmap, so on a full file system a first write to a new page is SIGBUS,
# which no handler survives; allocated here in full beforehand, they are never sparse.
RESERVED_KINDS = ("counter", "histogram")
RESERVED_BYTES = 1 << 20


def _reserve(live: Path) -> bool:
    """Allocate this process's metric files in full; False when the file system is full."""
    made = []
    try:
        for kind in RESERVED_KINDS:
            path = live / f"{kind}_{os.getpid()}.db"
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            made.append(path)
            try:
                if os.fstat(fd).st_size == 0:
                    os.posix_fallocate(fd, 0, RESERVED_BYTES)
            finally:
                os.close(fd)
    except OSError:
        for path in made:
            path.unlink(missing_ok=True)
        return False
    return True


def metrics() -> _Metrics:
    """This process's metrics; in a process that never called ``start`` they stay in memory."""
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def cluster_fallback() -> None:
    metrics().cluster_fallbacks.inc()


def rejected(reason: str) -> None:
    """Count one SMTP refusal (``reason`` is one of the rejection reasons in docs/operations.md)."""
    metrics().rejected.labels(reason).inc()


# ------------------------------------------------------------------ reading

Samples = dict[tuple[str, str, tuple[tuple[str, str], ...]], float]


def _read_files(paths: list[Path]) -> dict[str, Samples]:
    """The counter and histogram samples of metric files, by the pid in their names.

    Read file by file: a worker that is starting has created its file but not sized it yet
    (prometheus_client cannot read an empty file), and ``fold`` or ``retire`` may remove one
    meanwhile; such a file has nothing to count yet, or no more, and is passed over, never
    fatal to the reader (the supervisor reads these at every sweep)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    by_pid: dict[str, Samples] = defaultdict(lambda: defaultdict(float))
    for path in paths:
        kind, _, pid = path.stem.partition("_")
        if kind not in RESERVED_KINDS:
            continue
        try:
            families = MultiProcessCollector.merge([str(path)], accumulate=True)
        except (OSError, ValueError, struct.error):
            continue
        for family in families:
            for sample in family.samples:
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                by_pid[pid][key] += sample.value
    return by_pid


def _add(into: Samples, *more: Samples) -> Samples:
    for samples in more:
        for key, value in samples.items():
            into[key] += value
    return into


def _parse(rows: list) -> Samples:
    if not isinstance(rows, list):
        raise TypeError(f"rows must be a list, not {type(rows).__name__}")
    samples: Samples = defaultdict(float)
    for family, name, labels, value in rows:
        samples[(family, name, tuple(tuple(x) for x in labels))] += value
    return samples


def _rows(samples: Samples) -> list:
    return [[f, n, [list(x) for x in labels], v] for (f, n, labels), v in sorted(samples.items())]


def _write(path: Path, document: object) -> None:
    write_file_replacing(path.with_suffix(".new"), json.dumps(document).encode())
    os.replace(path.with_suffix(".new"), path)


def _load(path: Path, shape, set_aside: bool) -> object:
    """``shape`` of the JSON document at ``path`` (None if there is none). A damaged one (cut
    short, edited by hand) counts as none and is logged; the supervisor (``set_aside``)
    renames it to ``NAME.corrupt-TIME`` first, so what it writes next keeps the evidence."""
    try:
        return shape(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        if set_aside:
            os.replace(path, aside)
        note = str(aside) if set_aside else "left in place"
        logmod.get().error(
            "statistics_file_corrupt", path=str(path), error=repr(exc)[:200], note=note
        )
        return None


def _read_history(path: Path, set_aside: bool = False) -> Samples:
    return _load(path, _parse, set_aside) or defaultdict(float)


def _read_retired(path: Path, set_aside: bool = False) -> tuple[Samples, list[str]]:
    """The sums of this run's dead workers and the pids whose files may still be in live/."""
    return _load(path, _retired_shape, set_aside) or (defaultdict(float), [])


def _retired_shape(document: dict) -> tuple[Samples, list[str]]:
    return _parse(document["rows"]), [str(pid) for pid in document["pending"]]


def _this_run(spool: Spool, set_aside: bool = False) -> Samples:
    """Since start: the live files (read first) and the retired sums, each worker once."""
    by_pid = _read_files(list(spool.stats_path("live").glob("*.db")))
    retired, pending = _read_retired(spool.stats_path("retired.json"), set_aside)
    return _add(retired, *(samples for pid, samples in by_pid.items() if pid not in pending))


def retire(spool: Spool, pid: int) -> None:
    """Move a dead worker's counts out of its files into ``retired.json`` (supervisor only).

    The sums and the pid are written before the files go and the pid is struck off after,
    so a crash in between counts the worker at most twice in the history, and a reader
    counts it once whichever step it sees.
    """
    live = spool.stats_path("live")
    paths = [path for kind in RESERVED_KINDS if (path := live / f"{kind}_{pid}.db").exists()]
    if not paths:
        return
    path = spool.stats_path("retired.json")
    total, pending = _read_retired(path, set_aside=True)
    _add(total, *_read_files(paths).values())
    _write(path, {"rows": _rows(total), "pending": [*pending, str(pid)]})
    for dead in paths:
        dead.unlink(missing_ok=True)
    _write(path, {"rows": _rows(total), "pending": pending})


def live_count(spool: Spool, name: str) -> int:
    """One counter of ``METRICS`` summed over this run's processes."""
    return int(summarize(_this_run(spool)).get(name, 0))


def fold(spool: Spool) -> None:
    """Add the previous run (live files, retired sums) to the history; start a new run
    (supervisor only).

    The history is written (and renamed into place) before the live files go, so a crash in
    between can at worst count the previous run twice, never lose it.
    """
    live = spool.stats_path("live")
    live.mkdir(parents=True, exist_ok=True, mode=0o700)
    history = spool.stats_path("history.json")
    this_run = _this_run(spool, set_aside=True)
    _write(history, _rows(_add(_read_history(history, set_aside=True), this_run)))
    for path in live.glob("*.db"):
        path.unlink(missing_ok=True)
    spool.stats_path("retired.json").unlink(missing_ok=True)
    _write(spool.stats_path("started"), time.time())


def queue_depths(spool: Spool) -> dict[str, int]:
    return {state: spool.count(state) for state in STATES if state != "tmp"}


class Snapshot:
    """What the counters say now: ``since_start`` (this run) and ``totals`` (every run)."""

    def __init__(self, spool: Spool):
        self.live = _this_run(spool)
        self.totals = _read_history(spool.stats_path("history.json"))
        for key, value in self.live.items():
            self.totals[key] += value
        try:
            self.started = float(spool.stats_path("started").read_text())
        except (OSError, ValueError):
            self.started = None
        self.queues = queue_depths(spool)

    def as_json(self) -> dict:
        """The ``mailgate stats --json`` document (docs/operations.md lists its fields)."""
        return {
            "started": _iso(self.started) if self.started else None,
            "queues": self.queues,
            "totals": summarize(self.totals),
            "since_start": summarize(self.live),
        }

    def prometheus_text(self, node: str | None = None) -> bytes:
        """The totals and queue depths in Prometheus' text exposition format; in a cluster
        every sample carries the ``node`` label."""
        first = [node] if node else []
        names = ["node"] if node else []
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.exposition import generate_latest

        families = []
        for name, (kind, text, label) in METRICS.items():
            full = PREFIX + name
            mine = _of(self.totals, name)
            if kind == "counter":
                family = CounterMetricFamily(full, text, labels=names + ([label] if label else []))
                for (_, sample, labels), value in sorted(mine.items()):
                    if sample.endswith("_total"):
                        family.add_metric(first + [v for _, v in labels], value)
                if not label and not family.samples:
                    family.add_metric(first, 0.0)
            else:
                family = HistogramMetricFamily(full, text, labels=names)
                buckets = sorted(
                    (
                        (dict(labels)["le"], v)
                        for (_, s, labels), v in mine.items()
                        if s.endswith("_bucket")
                    ),
                    key=lambda b: float(b[0]),
                )
                total_sum = sum(v for (_, s, _), v in mine.items() if s.endswith("_sum"))
                if buckets:
                    family.add_metric(first, buckets, total_sum)
            families.append(family)
        depth = GaugeMetricFamily(
            PREFIX + "queue_messages", "Messages per spool state", labels=[*names, "state"]
        )
        for state, count in self.queues.items():
            depth.add_metric([*first, state], count)
        families.append(depth)

        class _Fixed:
            def collect(self):
                return families

        return generate_latest(_Fixed())  # type: ignore[arg-type]


def _of(samples: Samples, name: str) -> Samples:
    """The samples of one metric of ``METRICS``."""
    full = PREFIX + name
    return {k: v for k, v in samples.items() if k[0] == full}


def summarize(samples: Samples) -> dict:
    """Samples as ``{name: number}``, ``{name: {label: number}}`` or a histogram's summary."""
    out: dict = {}
    for name, (kind, _text, label) in METRICS.items():
        mine = _of(samples, name)
        if kind == "histogram":
            count = sum(v for (_, s, _), v in mine.items() if s.endswith("_count"))
            total = sum(v for (_, s, _), v in mine.items() if s.endswith("_sum"))
            out[name] = {
                "count": int(count),
                "sum": round(total, 6),
                "mean": round(total / count, 6) if count else None,
            }
        elif label:
            out[name] = {
                dict(labels)[label]: _number(v)
                for (_, s, labels), v in sorted(mine.items())
                if s.endswith("_total")
            }
        else:
            out[name] = _number(sum(v for (_, s, _), v in mine.items() if s.endswith("_total")))
    return out


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when))


def text_report(snapshot: Snapshot) -> str:
    """``mailgate stats`` without --json: one line per figure, totals then this run."""
    doc = snapshot.as_json()
    lines = [f"running since: {doc['started'] or 'never started'}", ""]
    lines.append("queues: " + "  ".join(f"{k}={v}" for k, v in doc["queues"].items()))
    lines.append("")
    lines.append(f"{'':28} {'total':>12} {'since start':>12}")
    for name in METRICS:
        total, live = doc["totals"][name], doc["since_start"][name]
        if isinstance(total, dict) and "count" in total:
            lines.append(f"{name + ' (count)':28} {total['count']:>12} {live['count']:>12}")
            mean = total["mean"]
            lines.append(f"{name + ' (mean)':28} {'-' if mean is None else f'{mean:.4f}':>12}")
        elif isinstance(total, dict):
            if not total:
                lines.append(f"{name:28} {0:>12} {0:>12}")
            for key in sorted(total):
                label = f"{name}[{key}]"
                lines.append(f"{label:28} {total[key]:>12} {live.get(key, 0):>12}")
        else:
            lines.append(f"{name:28} {total:>12} {live:>12}")
    return "\n".join(lines) + "\n"
