"""What the CLI tests share: run a console module as a user would (a subprocess with the repository on the
path), snapshot a folder's files, and assert the error boundary's contract (exit 2, one ``error:`` line that
names the culprit, at most two lines, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: the installed package, one torch thread."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(extra)
    return env


def run_module(module: str, *args: object, env: dict[str, str] | None = None, cwd: Path | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m <module> args...`` with :func:`cli_env` (or ``env``), captured as text."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=env or cli_env(), cwd=cwd or ROOT, timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Names and bytes of a folder's files; the run lock ``.lock`` (its holder's pid) is not a result."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def assert_one_line_error(result: subprocess.CompletedProcess, *culprits: str, max_lines: int = 2) -> str:
    """The error boundary's contract; returns the ``error:`` line."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert len(lines) <= max_lines, result.stderr
    for culprit in culprits:
        assert culprit in lines[-1], (culprit, lines[-1])
    return lines[-1]
