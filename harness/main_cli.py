"""The ``cmikit`` console script: toolkit-wide commands (data for now).

    cmikit data list                       what can be fetched, and where each dataset is read from
    cmikit data fetch awa2|mediq|sami-tldr|all [--manifest FILE] [--no-progress]
    cmikit data path NAME                  the folder a dataset is read from (for shell use)
    cmikit cache verify                    full sha256 of every cached file (embedded model, datasets)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from cmikit.harness.cli import dispatch
from cmikit.harness.config import parse_config
from cmikit.harness.errors import ConfigError

USAGE = """usage: cmikit <command> [args]

commands:
  data list                 the datasets, their size, licence and where each is read from
  data fetch NAME|all       download a dataset (pinned sha256, resumable) into $CMIKIT_CACHE/data/NAME
  data path NAME            print the folder a dataset is read from ($CMIKIT_DATA/NAME, else the cache)
  cache verify              hash every file of the cache in full against its recorded / pinned sha256

Datasets: awa2 (C-IP 20 Questions), mediq (MediQ + C-IP specialty splits), sami-tldr (SAMI TL;DR).
Set CMIKIT_DATA to a folder holding awa2/, mediq/, sami-tldr/ to use copies you already have."""

DATA_USAGE = """usage: cmikit data list [--manifest FILE]
       cmikit data fetch NAME|all [--manifest FILE] [--no-progress]
       cmikit data path NAME [--manifest FILE]"""


@dataclass
class DataOptions:
    """Options of ``cmikit data list|fetch|path`` (after the dataset name)."""

    manifest: str | None = field(default=None, metadata={"help": "a dataset manifest JSON (default: the built-in one)"})
    progress: bool = field(default=True, metadata={"help": "progress bar while fetching (--no-progress: none)"})


def data_command(argv: Sequence[str]) -> int:
    from cmikit.harness import data

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(DATA_USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ("list", "fetch", "path"):
        raise ConfigError(f"cmikit data: unknown command {command!r}; choose one of list, fetch, path.")
    prog = f"cmikit data {command}"
    name = None
    if command in ("fetch", "path") and rest[:1] not in (["-h"], ["--help"]):
        if not rest or rest[0].startswith("-"):
            raise ConfigError(f"{prog}: give a dataset name" + (" or all" if command == "fetch" else "") +
                              f" (`{prog} --help` shows the usage).")
        name, rest = rest[0], rest[1:]
    opts = parse_config(DataOptions, rest, prog=prog, description=DATA_USAGE, dashes=True)
    if command == "list":
        for row in data.describe(opts.manifest):
            where = str(row["location"]) if row["location"] else f"not fetched (cmikit data fetch {row['name']})"
            size = f"{row['bytes'] / 1e6:.1f} MB" if row["bytes"] >= 1e5 else f"{row['bytes'] / 1e3:.0f} kB"
            print(f"{row['name']:<10} {row['files']:>3} files {size:>8}  {where}")
            print(f"{'':<10} {row['description']}")
            print(f"{'':<10} licence: {row['licence']}")
        return 0
    manifest = data.load_manifest(opts.manifest)
    if name != "all" or command == "path":
        if name not in manifest:
            raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(manifest)}"
                              f"{', all' if command == 'fetch' else ''}.")
    if command == "path":
        print(data.data_dir(name, opts.manifest))
        return 0
    names = list(manifest) if name == "all" else [name]
    for name in names:
        data.fetch(name, manifest=opts.manifest, progress=opts.progress)
    return 0


CACHE_USAGE = "usage: cmikit cache verify [--manifest FILE]"


@dataclass
class CacheOptions:
    """Options of ``cmikit cache verify``."""

    manifest: str | None = field(default=None, metadata={"help": "a dataset manifest JSON (default: the built-in one)"})


def cache_command(argv: Sequence[str]) -> int:
    """``cmikit cache verify``: the full check (loads only do the cheap one; see cmikit.harness.embedded)."""
    from cmikit.harness import data, embedded
    from cmikit.harness.errors import DataFileError

    argv = list(argv)
    if argv[:1] in ([], ["-h"], ["--help"], ["help"]):
        print(CACHE_USAGE)
        return 0
    if argv[0] != "verify":
        raise ConfigError(f"cmikit cache: unknown command {argv[0]!r}; the command is verify.")
    args = parse_config(CacheOptions, argv[1:], prog="cmikit cache verify", description=CACHE_USAGE, dashes=True)
    problems = []
    folder = embedded.embedded_model_dir()
    if embedded.is_prepared(folder):
        problem = embedded.check_prepared(folder, full=True)
        print(f"models/{folder.name}: {'ok' if problem is None else 'DAMAGED: ' + problem}")
        if problem:
            problems.append(f"models/{folder.name}: {problem} (the next load prepares it again)")
    else:
        print(f"models/{folder.name}: not prepared")
    problems += data.verify(args.manifest)
    if problems:
        raise DataFileError(f"the cache {embedded.cache_root()} has {len(problems)} damaged item(s): "
                            f"{'; '.join(problems)}")
    return 0


COMMANDS = {"data": data_command, "cache": cache_command}


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("cmikit", USAGE, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
