"""Reading user files with errors that name the file (and the line): the readers of
:mod:`cmikit.harness.schemas`, under the names the SAMI modules use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmikit.harness.schemas import load_json, load_jsonl, read_text

__all__ = ["read_json", "read_jsonl", "read_text"]


def read_json(path: str | Path, what: str = "JSON file", schema: Any = None) -> Any:
    """Parse (and with ``schema`` validate) a JSON file; errors name the file and the line or JSON path."""
    return load_json(path, schema, what)


def read_jsonl(path: str | Path, what: str = "JSONL file", schema: Any = None) -> list[Any]:
    """Parse a JSON-lines file (blank lines skipped); errors name the file and the line."""
    return load_jsonl(path, schema, what)
