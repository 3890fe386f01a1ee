"""Every console script declared in pyproject.toml resolves to a callable that answers --help."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_the_console_scripts_are_declared():
    assert set(SCRIPTS) == {"sami", "cip", "dlm-decode", "cmikit"}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help(name, capsys):
    module, func = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), func)
    try:
        code = main(["--help"])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code in (0, None)
    out = capsys.readouterr().out
    assert "usage" in out.lower() and len(out.splitlines()) > 3


@pytest.mark.parametrize("package", ["cmikit.harness", "cmikit.sami", "cmikit.cip", "cmikit.decoding"])
def test_packages_say_what_they_are_for(package):
    doc = importlib.import_module(package).__doc__ or ""
    assert len(doc.split()) > 15 and "placeholder" not in doc
