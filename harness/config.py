"""Dataclass configs from YAML files with command-line overrides, on top of ``HfArgumentParser``.

``parse_config((MyConfig, OtherConfig), ["--config", "run.yaml", "--lr", "1e-4"])`` returns one instance per
dataclass. The YAML file's keys are turned into command-line options placed *before* the real ones, so the
same argparse type conversion and ``choices`` checks apply to both and the command line wins. Any problem
(unknown key, a value of the wrong type, a value outside the allowed set, a failed ``__post_init__`` check,
a missing file) raises :class:`ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cmikit.harness.errors import ConfigError
from cmikit.harness.schemas import cut


def _field_names(types: Sequence[type]) -> dict[str, type]:
    names: dict[str, type] = {}
    for cls in types:
        for f in dataclasses.fields(cls):
            if f.init:
                names[f.name] = cls
    return names


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping (:func:`cmikit.harness.schemas.load_yaml`: UTF-8, bounded after alias
    expansion, a mapping of string keys); any problem is a one-line :class:`ConfigError` naming the file."""
    from cmikit.harness.errors import DataFileError
    from cmikit.harness.schemas import ConfigMapping
    from cmikit.harness.schemas import load_yaml as load_checked_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        return load_checked_yaml(path, ConfigMapping, what="YAML config (a mapping of key: value)")
    except DataFileError as err:
        raise ConfigError(f"Config file {err}") from None


def _yaml_to_argv(data: dict[str, Any], allowed: dict[str, type], source: str) -> list[str]:
    argv: list[str] = []
    for key, value in data.items():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"Unknown key {cut(key, 40)} (value {cut(value)}) in {source}.{hint} Allowed keys: "
                f"{', '.join(sorted(allowed))}."
            )
        if value is None:
            continue  # null in YAML: keep the dataclass default
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, (list, tuple)):
            argv += [f"--{key}", *[json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in value]]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def parse_config(types: type | Sequence[type], args: Sequence[str] | None = None,
                 config_path: str | Path | None = None) -> Any:
    """Parse ``--config file.yaml`` plus ``--key value`` overrides into dataclass instances.

    Returns a single instance when ``types`` is one class, else a tuple in the order given.
    """
    from transformers import HfArgumentParser

    single = isinstance(types, type)
    type_list = [types] if single else list(types)
    argv = list(sys.argv[1:] if args is None else args)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a path to a YAML file.")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    allowed = _field_names(type_list)
    yaml_argv = _yaml_to_argv(load_yaml(config_path), allowed, str(config_path)) if config_path else []

    parser = HfArgumentParser(type_list)

    def _error(message: str) -> None:
        raise ConfigError(f"Bad configuration: {message}")

    parser.error = _error  # argparse would print usage and exit; raise an actionable error instead
    for token in argv:
        if token.startswith("--") and token[2:].split("=")[0] not in allowed and token not in ("--help", "-h"):
            key = token[2:].split("=")[0]
            close = difflib.get_close_matches(key, list(allowed), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"Unknown option --{key}.{hint} Allowed: {', '.join(sorted(allowed))}.")
    try:
        parsed = parser.parse_args_into_dataclasses(args=yaml_argv + argv, return_remaining_strings=True)
    except (ValueError, TypeError) as err:  # __post_init__ checks
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"Bad configuration: {err}") from err
    *instances, remaining = parsed
    if remaining:
        raise ConfigError(f"Unrecognised arguments: {' '.join(remaining)}")
    return instances[0] if single else tuple(instances)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a dataclass config (for saving next to results)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        try:
            json.dumps(value)
        except TypeError:
            value = str(value)
        out[f.name] = value
    return out


# ------------------------------------------------------------------------------------- start-up checks
# Every numeric option is checked before any model loads, with the option's name in the message. ``flag``
# is how the user spelled the key (``--n_games`` for the dataclass CLIs, ``--n-problems`` for argparse).
def _flag(key: str) -> str:
    return key if key.startswith("-") else f"--{key}"


def check_at_least(key: str, value: float | int | None, minimum: float | int, allow_none: bool = False) -> None:
    """``value >= minimum`` and finite (e.g. counts >= 1 where 0 has no meaning), else :class:`ConfigError`."""
    if value is None and allow_none:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{_flag(key)} {value}: must be a finite number >= {minimum}.")
    if value is None or isinstance(value, bool) or not value >= minimum:
        raise ConfigError(f"{_flag(key)} {value}: must be >= {minimum}.")


def check_range(key: str, value: float | None, low: float, high: float, low_open: bool = False,
                high_open: bool = False, allow_none: bool = False) -> None:
    """``low <= value <= high`` (``<`` on an open side), else :class:`ConfigError`."""
    if value is None and allow_none:
        return
    ok = value is not None and not isinstance(value, bool) and (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{_flag(key)} {value}: must lie in {interval}.")


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    """``value in choices``, else :class:`ConfigError` listing them."""
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"{_flag(key)} {value!r}: choose one of {', '.join(map(str, choices))}.{hint}")


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def strict_bool(text: str | bool) -> bool:
    """Parse a boolean option strictly: ``true/false/1/0/yes/no`` (any case); anything else is refused
    (``ture`` must not quietly mean False). Usable as an argparse ``type``."""
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    import argparse

    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true/false, 1/0 or yes/no")


def check_file(key: str, path: str | Path | None, what: str = "file") -> Path:
    """The path as a :class:`Path` when it is an existing file, else :class:`ConfigError` naming the option."""
    if path is None or str(path) == "":
        raise ConfigError(f"{_flag(key)} is required: give the path of a {what}.")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{_flag(key)} {path}: {what} not found.")
    return p
