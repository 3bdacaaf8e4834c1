"""The architecture rules of DESIGN.md, checked on the code itself.

- tasks/ never imports flows/ or Prefect, and no two modules import each other in a cycle: the
  import-linter contracts in pyproject.toml (the same check as `make lint`).
- Small modules: none over MAX_LINES.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

MAX_LINES = 400


def _lint_imports(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    return subprocess.run([str(bin_dir / "lint-imports"), "--no-cache"], cwd=cwd, capture_output=True, text=True,
                          env={"NO_COLOR": "1", "PATH": str(bin_dir), **env})


def test_import_contracts_are_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contract_catches_a_cycle(tmp_path):
    """A copy of tasks/ with metrics importing answering (a cycle through indexing) breaks the contract."""
    import shutil

    copy = tmp_path / "tasks"
    shutil.copytree(ROOT / "tasks", copy, ignore=shutil.ignore_patterns("__pycache__"))
    metrics = copy / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _cycle():\n    from tasks.answering import Answerer  # noqa\n")
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text("")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = _lint_imports(tmp_path, PYTHONPATH=str(tmp_path))
    assert result.returncode != 0
    assert "No cycles are allowed in tasks" in result.stdout


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix()
                                        for package in ("tasks", "flows") for p in (ROOT / package).glob("*.py")))
def test_module_is_small(path):
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= MAX_LINES, f"{path} has {lines} lines: split it along its seams"
