"""The package's shape is part of its contract: stages in layers, small modules, one schema."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from support import ROOT

PACKAGE = ROOT / "mailgate"
MAX_LINES = 420


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "data" not in p.relative_to(PACKAGE).parts)


def test_import_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_function_level_import_of_mailgate():
    """Every dependency between modules is visible at the top, where import-linter and a
    reader see it; commands and worker roles are chosen by name (``importlib``) instead."""
    found = []
    for path in modules():
        tree = ast.parse(path.read_text(), str(path))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mailgate")
                ) or (
                    isinstance(node, ast.Import)
                    and any(a.name.startswith("mailgate") for a in node.names)
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_modules_stay_small():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules()}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert too_long == {}


def test_each_stage_is_a_subpackage():
    stages = {"spool", "receive", "scan", "send", "supervise", "ops", "config", "cli"}
    present = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert stages <= present
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "__main__.py"]


def test_generated_reference_and_sample_are_current():
    result = subprocess.run(
        [sys.executable, "-m", "mailgate.config.reference", "--check", "--root", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, (
        result.stderr + "run: .venv/bin/python -m mailgate.config.reference"
    )
