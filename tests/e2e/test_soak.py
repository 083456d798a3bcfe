"""The short version of ``scripts/soak``: the same tool, for half a minute, in the suite.

Every kind of fault comes up at least once in that time (the chaos thread deals them from a
shuffled deck); what must hold is what the long run prints: nothing acknowledged is lost,
and every duplicate has a chaos event that opened its window.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import ROOT


@pytest.mark.slow
def test_a_short_soak_loses_nothing():
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), "--minutes", "0.5", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.stdout.strip(), done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["accepted"] > 100, result
    assert len(result["chaos"]) >= 4, result
    assert result["lost"] == 0, result
    assert result["unexplained_duplicates"] == [], result
    outcomes = ("delivered", "bounced", "quarantined", "queued")
    assert sum(result[k] for k in outcomes) >= result["accepted"], result
    assert done.returncode == 0, done.stderr[-3000:]
