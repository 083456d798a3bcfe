"""prometheus_client maps its multiprocess files and writes through the mapping: on a full
file system a sparse page means SIGBUS. mailgate allocates each process's files in full first,
or keeps that process's counters in memory, and the supervisor retires a dead process's
files into a sum; these tests hold prometheus_client to the file
names reserved (an upgrade that changes them fails here) and check the full-disk case."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mailgate.runtime import stats
from mailgate.spool import Spool

PROBE = """
import json, os, sys
from mailgate.spool import Spool
from mailgate.runtime import stats
spool = Spool(sys.argv[1]); spool.create()
stats.start(spool)
metrics = stats.metrics()
metrics.scanned.inc(); metrics.scan_seconds.observe(0.1); metrics.virus_status.labels("clean").inc()
mine = [p for p in spool.stats_path("live").iterdir() if p.name.endswith(f"_{os.getpid()}.db")]
print(json.dumps({
    "files": sorted(p.name.split("_")[0] for p in mine),
    "allocated": all(p.stat().st_blocks * 512 >= stats.RESERVED_BYTES for p in mine),
    "shared": os.environ.get(stats.ENV) is not None,
    "pid": os.getpid(),
}))
"""


def probe(spool) -> dict:
    """Run one counting process over ``spool``; what it made (its pid under "pid")."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(spool)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_metric_files_are_the_reserved_ones_and_fully_allocated(tmp_path):
    got = probe(tmp_path / "spool")
    del got["pid"]
    assert got == {"files": sorted(stats.RESERVED_KINDS), "allocated": True, "shared": True}


def test_on_a_full_file_system_the_counters_stay_in_memory_instead_of_sigbus(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small file system: {mount.stderr.decode().strip()}")
    try:
        (small / "spool").mkdir()
        with open(small / "fill", "wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        got = probe(small / "spool")
        del got["pid"]
        assert got == {"files": [], "allocated": True, "shared": False}
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_worker_still_creating_its_files_does_not_break_the_readers(tmp_path):
    """A worker that has created its file but not sized it yet, or a histogram file cut short,
    is passed over: the supervisor reads these files at every sweep and must not die of it."""
    spool = Spool(tmp_path / "spool")
    probe(spool.root)  # one worker's counts: scanned 1, one clean status
    live = spool.stats_path("live")
    (live / "counter_999991.db").touch()  # created, not yet allocated
    (live / "histogram_999992.db").write_bytes(b"\x01")  # cut short
    assert stats.live_count(spool, "scanned") == 1
    assert stats.Snapshot(spool).as_json()["since_start"]["scanned"] == 1


def counts(spool) -> tuple[int, int, int]:
    """scanned since start, in all, and the clean statuses since start."""
    doc = stats.Snapshot(spool).as_json()
    return (
        doc["since_start"]["scanned"],
        doc["totals"]["scanned"],
        doc["since_start"]["virus_status"].get("clean", 0),
    )


def test_a_dead_workers_files_are_retired_into_a_sum_and_its_counts_kept(tmp_path):
    """A worker that keeps dying must not leave 2 MiB of spool behind at every restart."""
    spool = Spool(tmp_path / "spool")
    dead, alive = probe(spool.root)["pid"], probe(spool.root)["pid"]
    live = spool.stats_path("live")
    assert counts(spool) == (2, 2, 2)

    stats.retire(spool, dead)
    assert sorted(p.name for p in live.iterdir()) == [
        f"{k}_{alive}.db" for k in ("counter", "histogram")
    ]
    assert counts(spool) == (2, 2, 2)
    assert stats.Snapshot(spool).as_json()["since_start"]["scan_seconds"]["count"] == 2
    stats.retire(spool, dead)  # nothing left of it: a second call adds nothing
    assert counts(spool) == (2, 2, 2)

    stats.fold(spool)  # the next run starts from the history, retired sums included
    assert counts(spool) == (0, 2, 0)
    assert not spool.stats_path("retired.json").exists()


def test_a_reader_between_the_steps_of_a_retirement_counts_the_worker_once(tmp_path):
    """retire writes the sums naming the pid, removes the files, then strikes the pid off;
    a reader (or a crash) between those steps must count the worker once, not twice or not
    at all."""
    spool = Spool(tmp_path / "spool")
    dead = probe(spool.root)["pid"]
    probe(spool.root)
    live = spool.stats_path("live")
    files = {p.name: p.read_bytes() for p in live.glob(f"*_{dead}.db")}
    stats.retire(spool, dead)
    retired = spool.stats_path("retired.json")
    document = json.loads(retired.read_text())
    assert document["pending"] == []

    retired.write_text(json.dumps({**document, "pending": [str(dead)]}))
    assert counts(spool) == (2, 2, 2)  # after the files went, before the pid was struck off
    for name, data in files.items():
        (live / name).write_bytes(data)
    assert counts(spool) == (2, 2, 2)  # after the sums were written, before the files went


@pytest.mark.parametrize(
    "damage",
    [b'[["mailgate_scanned_total", "mailgate_scanned_to', b"{}", b"[[1, 2]]", b"\xff\xfe"],
)
def test_a_damaged_statistics_file_is_logged_and_set_aside_never_fatal(tmp_path, damage):
    """history.json or retired.json cut short or edited by hand: readers count without it,
    the supervisor renames it aside (the evidence stays) and starts it afresh."""
    spool = Spool(tmp_path / "spool")
    probe(spool.root)
    for name in ("history.json", "retired.json"):
        spool.stats_path(name).write_bytes(damage)
    assert counts(spool) == (1, 1, 1)
    assert spool.stats_path("history.json").read_bytes() == damage  # a reader changes nothing

    stats.fold(spool)
    aside = sorted(p.name.split(".corrupt-")[0] for p in (spool.root / "stats").glob("*.corrupt-*"))
    assert aside == ["history.json", "retired.json"]
    assert counts(spool) == (0, 1, 0)
