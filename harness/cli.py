"""The sub-command dispatcher shared by the ``sami`` and ``cip`` console scripts."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence


def dispatch(prog: str, usage: str, commands: Mapping[str, Callable[[Sequence[str]], int]],
             argv: Sequence[str] | None = None,
             user_errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)) -> int:
    """Run ``prog <command> [args]``: usage on ``--help``, exit code 2 with a one-line message for an unknown
    command or for a user error (bad config, missing file), so that people see what to fix, not a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in commands:
        print(f"{prog}: unknown command {command!r}; choose one of {', '.join(commands)}.\n\n{usage}",
              file=sys.stderr)
        return 2
    try:
        return commands[command](rest)
    except user_errors as err:
        print(f"{prog} {command}: {err}", file=sys.stderr)
        return 2
