"""The ``cmikit`` console script: toolkit-wide commands (data for now).

    cmikit data list                       what can be fetched, and where each dataset is read from
    cmikit data fetch awa2|mediq|sami-tldr|all [--manifest FILE] [--no-progress]
    cmikit data path NAME                  the folder a dataset is read from (for shell use)
    cmikit cache verify                    full sha256 of every cached file (embedded model, datasets)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cmikit.harness.cli import dispatch
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


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one line, exit 2 through the error boundary) instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (`{self.prog} --help` shows the usage).")


def _data_parser(command: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=f"cmikit data {command}", description=DATA_USAGE)
    if command in ("fetch", "path"):
        parser.add_argument("name", help="dataset name" + (", or all" if command == "fetch" else ""))
    parser.add_argument("--manifest", default=None, help="a dataset manifest JSON (default: the built-in one)")
    if command == "fetch":
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def data_command(argv: Sequence[str]) -> int:
    from cmikit.harness import data

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(DATA_USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in ("list", "fetch", "path"):
        raise ConfigError(f"cmikit data: unknown command {command!r}; choose one of list, fetch, path.")
    args = _data_parser(command).parse_args(rest)
    if command == "list":
        for row in data.describe(args.manifest):
            where = str(row["location"]) if row["location"] else f"not fetched (cmikit data fetch {row['name']})"
            size = f"{row['bytes'] / 1e6:.1f} MB" if row["bytes"] >= 1e5 else f"{row['bytes'] / 1e3:.0f} kB"
            print(f"{row['name']:<10} {row['files']:>3} files {size:>8}  {where}")
            print(f"{'':<10} {row['description']}")
            print(f"{'':<10} licence: {row['licence']}")
        return 0
    manifest = data.load_manifest(args.manifest)
    if args.name != "all" or command == "path":
        if args.name not in manifest:
            raise ConfigError(f"unknown dataset {args.name!r}; choose one of {', '.join(manifest)}"
                              f"{', all' if command == 'fetch' else ''}.")
    if command == "path":
        print(data.data_dir(args.name, args.manifest))
        return 0
    names = list(manifest) if args.name == "all" else [args.name]
    for name in names:
        data.fetch(name, manifest=args.manifest, progress=not args.no_progress)
    return 0


def cache_command(argv: Sequence[str]) -> int:
    """``cmikit cache verify``: the full check (loads only do the cheap one; see cmikit.harness.embedded)."""
    from cmikit.harness import data, embedded
    from cmikit.harness.errors import DataFileError

    argv = list(argv)
    if argv[:1] in ([], ["-h"], ["--help"], ["help"]):
        print("usage: cmikit cache verify [--manifest FILE]")
        return 0
    if argv[0] != "verify":
        raise ConfigError(f"cmikit cache: unknown command {argv[0]!r}; the command is verify.")
    parser = _Parser(prog="cmikit cache verify")
    parser.add_argument("--manifest", default=None, help="a dataset manifest JSON (default: the built-in one)")
    args = parser.parse_args(argv[1:])
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
