"""One command-line convention for every cmikit command (``sami``, ``cip``, ``dlm-decode``, ``cmikit``): dataclass
configs from a YAML file with command-line overrides, parsed by :class:`CmikitParser`, a ``trl.TrlParser`` (itself
a ``transformers.HfArgumentParser``).

``parse_config((MyConfig, OtherConfig), ["--config", "run.yaml", "--lr", "1e-4"])`` returns one instance per
dataclass. The convention (docs/harness.md, "The command-line convention"):

* every field ``x_y`` is ``--x_y`` and ``--x-y`` (``HfArgumentParser``'s spellings); ``--x_y=value`` works too;
* a boolean is ``--x`` (true), ``--x true|false|1|0|yes|no`` (anything else is refused: ``ture`` must not
  quietly mean false) and ``--no_x`` / ``--no-x`` (false), whatever its default;
* an optional value (``int | None``) also takes ``none``; a list takes several values (``--seeds 0 1 2``), or
  one per flag when its field has ``metadata={"repeat": True}`` (``--prompt a --prompt b``);
* ``--config FILE`` or ``--config=FILE`` reads a YAML mapping of ``key: value`` (``env:`` sets environment
  variables, as ``TrlParser`` does). Its keys become command-line options placed *before* the real ones, so the
  same type conversion and ``choices`` checks apply to both and the command line wins. A key given twice is
  refused, naming it and both lines;
* any problem (unknown option or key, with a did-you-mean hint; a value of the wrong type or outside the allowed
  set; a failed ``__post_init__`` check; a missing file) raises :class:`ConfigError`, which the CLI boundary prints
  as one ``error:`` line (exit 2). Abbreviations (``--learn`` for ``--learning_rate``) are not accepted.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from cmikit.harness.errors import CmikitError, ConfigError
from cmikit.harness.schemas import cut

CONFIG_FLAG = "--config"


# ------------------------------------------------------------------------------------------------- YAML
class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key given twice (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        except TypeError:  # an unhashable key: PyYAML refuses it itself
            continue
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing file, non-UTF-8 text, invalid YAML, a non-mapping, a key given
    twice (at any depth) or an alias bomb (:func:`cmikit.harness.schemas.validate` bounds the expanded size) is
    a one-line :class:`ConfigError` naming the file (and the key and both lines)."""
    from cmikit.harness.errors import DataFileError
    from cmikit.harness.schemas import ConfigMapping, read_text, validate

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        data = yaml.load(read_text(path, "YAML config"), Loader=_UniqueKeyLoader) or {}
    except _DuplicateKey as dup:
        raise ConfigError(f"Config file {path}: key {dup.key!r} is given twice (lines {dup.first} and "
                          f"{dup.second}); keep one.") from None
    except DataFileError as err:
        raise ConfigError(f"Config file {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"Config file {path}{where} is not valid YAML: {cut(problem)}") from None
    except RecursionError:
        raise ConfigError(f"Config file {path} is nested too deeply to be a config.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of key: value, got {type(data).__name__}.")
    try:
        return validate(ConfigMapping, data, path, what="YAML config (a mapping of key: value)")
    except DataFileError as err:
        raise ConfigError(f"Config file {err}") from None


def split_config_flag(argv: Sequence[str]) -> tuple[list[str], str | None]:
    """``argv`` without ``--config FILE`` / ``--config=FILE``, and the file (None when absent)."""
    rest: list[str] = []
    path: str | None = None
    argv = list(argv)
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == CONFIG_FLAG or token.startswith(CONFIG_FLAG + "="):
            if path is not None:
                raise ConfigError(f"{CONFIG_FLAG} is given twice ({path} and the next); give one YAML file.")
            if token == CONFIG_FLAG:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise ConfigError(f"{CONFIG_FLAG} needs a path to a YAML file.")
                path = argv[i + 1]
                i += 2
                continue
            path = token.split("=", 1)[1]
            if not path:
                raise ConfigError(f"{CONFIG_FLAG}= needs a path to a YAML file.")
        else:
            rest.append(token)
        i += 1
    return rest, path


# ----------------------------------------------------------------------------------------------- parser
def _trl_parser_class() -> type:
    from trl.scripts.utils import TrlParser

    return TrlParser


def _is_bool(tp: Any) -> bool:
    return tp is bool or tp == (bool | None)


class _ParserMixin:
    """What :class:`CmikitParser` adds to ``TrlParser`` (see the module docstring). Written as a mixin so that
    ``trl`` is imported only when a command line is parsed."""

    def __init__(self, dataclass_types: Sequence[type], exclude: Iterable[str] = (), dashes: bool = False,
                 **kwargs: Any) -> None:
        self._exclude = frozenset(exclude)  # known before the base constructor adds the options
        self.dashes = dashes
        super().__init__(dataclass_types, **kwargs)

    def _parse_dataclass_field(self, parser: Any, field: dataclasses.Field) -> None:  # type: ignore[override]
        if field.name in self._exclude:  # not an option: the dataclass default
            if field.default_factory is not dataclasses.MISSING:
                parser.set_defaults(**{field.name: field.default_factory()})
            elif field.default is not dataclasses.MISSING:
                parser.set_defaults(**{field.name: field.default})
            return
        if field.metadata.get("repeat"):  # --prompt a --prompt b (argparse "append"), a list field
            kwargs = {k: v for k, v in field.metadata.items() if k not in ("repeat", "aliases")}
            names = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            parser.add_argument(*names, action="append", default=default, **kwargs)
            return
        super()._parse_dataclass_field(parser, field)  # type: ignore[misc]
        if self.dashes:  # argparse names an option by its first spelling: the one this command documents
            for action in parser._actions:
                if action.dest == field.name:
                    action.option_strings.sort(key=lambda s: "_" in s)
        if not _is_bool(field.type):
            return
        for action in parser._actions:  # strict booleans: `ture` is refused, not read as false
            if action.dest == field.name and action.type is not None:
                action.type = strict_bool
        # --no_x / --no-x for every boolean (HfArgumentParser adds them only for a default of True)
        negatives = [f"--no_{field.name}", f"--no-{field.name.replace('_', '-')}"]
        if field.default is not True and not field.name.startswith("no_") and not any(
                n in parser._option_string_actions for n in negatives):
            parser.add_argument(*dict.fromkeys(negatives), action="store_false", dest=field.name,
                                default=argparse.SUPPRESS, help=f"same as --{field.name} false")

    def error(self, message: str) -> typing.NoReturn:  # argparse would print the usage and exit
        hint = f" (`{self.prog} --help` lists the options)" if getattr(self, "named", False) else ""
        raise ConfigError(f"Bad configuration: {message}{hint}.")

    # -- the convention -----------------------------------------------------------------------------
    def field_names(self) -> dict[str, type]:
        return {f.name: cls for cls in self.dataclass_types for f in dataclasses.fields(cls)
                if f.init and f.name not in self._exclude}

    def _unknown(self, key: str, what: str, value: Any = dataclasses.MISSING, source: str = "") -> ConfigError:
        allowed = self.field_names()
        names = list(allowed) + [f"no_{n}" for n in self._bool_names()]
        want = key.replace("-", "_")
        close = [n for n in names if n.startswith(want)][:3] or difflib.get_close_matches(want, names, n=3)
        hint = f" Did you mean {', '.join(self.flag(c) if what == 'option' else c for c in close)}?" if close else ""
        shown = f"--{key}" if what == "option" else repr(key)[:60]
        val = "" if value is dataclasses.MISSING else f" (value {cut(value)})"  # cut: an alias bomb is megabytes
        where = f" in {source}" if source else ""
        listed = sorted(self.flag(n) for n in allowed) if what == "option" else sorted(allowed)
        return ConfigError(f"Unknown {what} {shown}{val}{where}.{hint} Allowed: {', '.join(listed)}.")

    def flag(self, name: str) -> str:
        """How this command's messages spell the option of field ``name`` (``--x_y``, or ``--x-y`` for a command
        documented with dashes); both spellings are accepted."""
        return f"--{name.replace('_', '-')}" if self.dashes else f"--{name}"

    def _bool_names(self) -> set[str]:
        hints: dict[str, Any] = {}
        for cls in self.dataclass_types:
            hints.update(typing.get_type_hints(cls))
        return {n for n in self.field_names() if _is_bool(hints.get(n))}

    def _check_options(self, argv: Sequence[str]) -> None:
        for token in argv:
            if token.startswith("--") and len(token) > 2 and token not in ("--help",):
                key = token.split("=", 1)[0]
                if key not in self._option_string_actions:
                    raise self._unknown(key[2:], "option")

    def yaml_argv(self, data: dict[str, Any], source: str) -> list[str]:
        """A YAML mapping as command-line tokens (placed before the real ones, so the command line wins)."""
        argv: list[str] = []
        allowed = self.field_names()
        for raw_key, value in data.items():
            key = str(raw_key).replace("-", "_")
            if key not in allowed:
                raise self._unknown(str(raw_key), "key", value, source)
            if value is None:
                continue  # null in YAML: keep the dataclass default
            flag = f"--{key}"
            action = self._option_string_actions[flag]
            items = value if isinstance(value, (list, tuple)) else [value]
            text = [json.dumps(v) if isinstance(v, (dict, list)) else str(v).lower() if isinstance(v, bool)
                    else str(v) for v in items]
            if isinstance(value, dict):
                text = [json.dumps(value)]
            if isinstance(action, argparse._AppendAction):
                for t in text:
                    argv += [flag, t]
            else:
                argv += [flag, *text]
        return argv

    def explicit_keys(self, argv: Sequence[str]) -> set[str]:
        """The fields the command line or its ``--config`` file sets (the rest keep their defaults)."""
        argv, path = split_config_flag(argv)
        keys = {str(k).replace("-", "_") for k in load_yaml(path)} if path else set()
        for token in argv:
            action = self._option_string_actions.get(token.split("=", 1)[0]) if token.startswith("--") else None
            if action is not None and action.dest in self.field_names():
                keys.add(action.dest)
        return keys

    def parse(self, args: Sequence[str] | None = None, config_path: str | Path | None = None) -> tuple[Any, ...]:
        """One instance per dataclass from ``--config FILE`` plus the command line (see the module docstring)."""
        argv, path = split_config_flag(sys.argv[1:] if args is None else args)
        path = path or (str(config_path) if config_path else None)
        env: dict[str, Any] = {}
        yaml_argv: list[str] = []
        if path:
            data = load_yaml(path)
            if "env" in data and "env" not in self.field_names():  # TrlParser's `env:` mapping
                env = data.pop("env") or {}
                if not isinstance(env, dict):
                    raise ConfigError(f"Config file {path}: env must be a mapping of NAME: value.")
            yaml_argv = self.yaml_argv(data, path)
        self._check_options(argv)
        try:
            *instances, remaining = self.parse_args_into_dataclasses(
                args=yaml_argv + argv, return_remaining_strings=True, look_for_args_file=False)
        except ConfigError as err:
            raise ConfigError(self._flag_names(str(err))) from None
        except CmikitError:  # a data file or model reference checked by __post_init__: already one clear line
            raise
        except (ValueError, TypeError) as err:  # other __post_init__ checks
            raise ConfigError(f"Bad configuration: {self._flag_names(str(err))}") from err
        if remaining:
            raise ConfigError(f"Unrecognised arguments: {' '.join(remaining)}")
        for name, value in env.items():
            os.environ[str(name)] = str(value)
        return tuple(instances)

    def _flag_names(self, message: str) -> str:
        """``Config.field=value`` in a dataclass's own message becomes ``--field value`` (the flag)."""
        for cls in self.dataclass_types:
            for name in self.field_names():
                message = message.replace(f"{cls.__name__}.{name}=", f"{self.flag(name)} ")
        return message


_PARSER_CLASS: type | None = None


def make_parser(types: type | Sequence[type], *, exclude: Iterable[str] = (), prog: str | None = None,
                description: str | None = None, dashes: bool = False) -> Any:
    """The ``CmikitParser`` (a ``trl.TrlParser``) of one or more dataclasses; ``exclude`` names fields that are
    not options (they keep their defaults); ``dashes`` spells flags ``--x-y`` in messages (``dlm-decode``)."""
    global _PARSER_CLASS
    if _PARSER_CLASS is None:
        _PARSER_CLASS = type("CmikitParser", (_ParserMixin, _trl_parser_class()), {"__doc__": _ParserMixin.__doc__})
    type_list = [types] if isinstance(types, type) else list(types)
    kwargs: dict[str, Any] = {"allow_abbrev": False, "formatter_class": argparse.RawDescriptionHelpFormatter}
    if prog:
        kwargs["prog"] = prog
    if description:
        kwargs["description"] = description
    parser = _PARSER_CLASS(type_list, exclude=exclude, dashes=dashes, **kwargs)
    parser.named = bool(prog)
    return parser


def parse_config(types: type | Sequence[type], args: Sequence[str] | None = None,
                 config_path: str | Path | None = None, *, exclude: Iterable[str] = (), prog: str | None = None,
                 description: str | None = None, dashes: bool = False) -> Any:
    """Parse ``--config file.yaml`` plus ``--key value`` overrides into dataclass instances (the convention of
    the module docstring). Returns a single instance when ``types`` is one class, else a tuple in the order
    given."""
    parser = make_parser(types, exclude=exclude, prog=prog, description=description, dashes=dashes)
    instances = parser.parse(args, config_path)
    return instances[0] if isinstance(types, type) else instances


def explicit_keys(types: type | Sequence[type], args: Sequence[str], *, exclude: Iterable[str] = ()) -> set[str]:
    """The fields that ``args`` (command line and ``--config`` file) set, under any spelling of the convention
    (``--x-y``, ``--no_x``, ``--x=v``)."""
    return make_parser(types, exclude=exclude).explicit_keys(args)


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
