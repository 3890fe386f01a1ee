"""The error boundary and sub-command dispatcher shared by the ``sami``, ``cip``, ``dlm-decode`` and
``cmikit`` console scripts.

A :class:`cmikit.harness.errors.CmikitError` (bad config, model reference, data file, thresholds, incompatible or
busy run folder) is printed as one line, ``error: <message>``, with exit code 2. Ctrl-C prints one line and
exits 130 (resumable commands resume where they stopped when rerun). A full disk or a folder that cannot
be written (ENOSPC, EDQUOT, EACCES, EPERM, EROFS) is a fault of the machine, not a bug: one line, exit 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from cmikit.harness.errors import CmikitError

EXIT_USER_ERROR = 2
# Faults of the machine, not of the program: a full disk, a read-only or forbidden output or cache folder.
ENVIRONMENT_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
EXIT_INTERRUPTED = 130


def print_error(message: str, stream: TextIO | None = None) -> None:
    """``error: <message>`` on one line (newlines folded) to stderr."""
    text = " ".join(str(message).split())
    print(f"error: {text}", file=stream or sys.stderr)


def describe_os_error(err: OSError) -> str:
    """One line for a disk-full / permission / read-only fault: the file, the reason, what to do."""
    where = f" {err.filename}" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = "free some space (or point the output elsewhere) and rerun the same command: finished work is kept"
    else:
        todo = "choose a folder you can write (an output option, or CMIKIT_CACHE for the cache) and rerun"
    return f"cannot write{where}: {err.strerror or err}; {todo}."


def run_cli(main: Callable[[], int | None], interrupted_hint: str = "") -> int:
    """Call ``main()`` inside the error boundary and return the exit code (see the module docstring)."""
    try:
        code = main()
    except CmikitError as err:
        print_error(str(err) or type(err).__name__)
        return EXIT_USER_ERROR
    except OSError as err:
        if err.errno not in ENVIRONMENT_FAULTS:
            raise
        print_error(describe_os_error(err))
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
