"""The error boundary and sub-command dispatcher shared by the ``sami``, ``cip``, ``dlm-decode`` and
``cmikit`` console scripts.

A :class:`cmikit.harness.errors.CmikitError` (bad config, model reference, data file, thresholds, incompatible or
busy run folder) is printed as one line, ``error: <message>``, with exit code 2. Ctrl-C prints one line and
exits 130 (resumable commands resume where they stopped when rerun). Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from cmikit.harness.errors import CmikitError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def print_error(message: str, stream: TextIO | None = None) -> None:
    """``error: <message>`` on one line (newlines folded) to stderr."""
    text = " ".join(str(message).split())
    print(f"error: {text}", file=stream or sys.stderr)


def run_cli(main: Callable[[], int | None], interrupted_hint: str = "") -> int:
    """Call ``main()`` inside the error boundary and return the exit code (see the module docstring)."""
    try:
        code = main()
    except CmikitError as err:
        print_error(str(err) or type(err).__name__)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"\ninterrupted{'; ' + interrupted_hint if interrupted_hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return int(code or 0)


def dispatch(prog: str, usage: str, commands: Mapping[str, Callable[[Sequence[str]], int]],
             argv: Sequence[str] | None = None) -> int:
    """Run ``prog <command> [args]``: usage on ``--help``; exit code 2 with a one-line message for an unknown
    command or any :class:`CmikitError`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in commands:
        print_error(f"{prog}: unknown command {command!r}; choose one of {', '.join(commands)} "
                    f"(`{prog} --help` lists them).")
        return EXIT_USER_ERROR
    return run_cli(lambda: commands[command](rest),
                   interrupted_hint="rerun the same command to resume where it stopped")
