"""What the CLI tests share: run a console command's ``main(argv)`` in this process (:func:`call_main`, fast: no
new interpreter, no imports paid again) or as a user would (:func:`run_module`, a subprocess, kept for the real
process exit code, kill -9 and Ctrl-C), snapshot a folder's files, and assert the error boundary's contract (exit
2, one ``error:`` line that names the culprit, at most two lines, no traceback)."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
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


def call_main(module: str, *args: object, env: Mapping[str, str] | None = None, cwd: Path | None = None,
              stdin: str = "") -> subprocess.CompletedProcess:
    """``<module>.main(argv)`` in this process, as ``python -m <module> args...`` would run it: the exit code
    (a ``SystemExit`` counts as the process's exit), stdout and stderr captured as text. ``env`` is added to
    the environment with :func:`cli_env`'s settings. What a command may change in the process is put back
    afterwards: environment, working folder, torch threads, logging handlers and levels, signal handlers. Like
    the subprocess, the command gets one torch thread (``OMP_NUM_THREADS`` in ``env`` to change it)."""
    import torch

    main = importlib.import_module(module).main
    saved_env, saved_cwd, saved_threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    root = logging.getLogger()
    saved_logging = (list(root.handlers), root.level)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.update({"TOKENIZERS_PARALLELISM": "false", **(env or {})})
        os.chdir(cwd or ROOT)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1) if "OMP_NUM_THREADS" in (env or {}) else 1)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _stdin(stdin):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_info:
                code = exit_info.code if isinstance(exit_info.code, int) else (0 if exit_info.code is None else 1)
                if isinstance(exit_info.code, str):
                    print(exit_info.code, file=sys.stderr)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        torch.set_num_threads(saved_threads)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        root.handlers[:], root.level = saved_logging
    return subprocess.CompletedProcess([module, *map(str, args)], int(code or 0), out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _stdin(text: str):
    saved = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = saved


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
