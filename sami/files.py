"""Reading user files with errors that name the file (and the line): :class:`cmikit.harness.errors.DataFileError`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmikit.harness.errors import DataFileError


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or non-UTF-8 file raises :class:`DataFileError`."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{what} not found", path=path)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFileError(f"not UTF-8 text ({err.reason} at byte {err.start}); save the {what} as UTF-8",
                            path=path) from err
    except OSError as err:
        raise DataFileError(f"cannot read the {what}: {err.strerror}", path=path) from err


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file; errors name the file and the line."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFileError(f"not valid JSON: {err.msg} (column {err.colno})", path=path, line=err.lineno) from err


def read_jsonl(path: str | Path, what: str = "JSONL file") -> list[Any]:
    """Parse a JSON-lines file (blank lines skipped); errors name the file and the line."""
    rows = []
    for n, line in enumerate(read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataFileError(f"not valid JSON: {err.msg} (column {err.colno})", path=path, line=n) from err
    return rows
