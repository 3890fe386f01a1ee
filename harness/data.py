"""Public data the toolkit's benchmarks use, and where to find it on this machine.

``cmikit data fetch awa2|mediq|sami-tldr|all`` downloads each dataset's files from their authors' public
repositories, pinned to a commit, into ``$CMIKIT_CACHE/data/<name>/`` (default ``~/.cache/cmikit/data``).
Every file has a pinned size and sha256 (:file:`harness/datasets.json`); a file whose checksum differs is
refused and not kept. Downloads resume: a file is written to ``<name>.part`` and an interrupted transfer
continues from there with an HTTP ``Range`` request. Files derived from the raw ones (the AwA2 20-class
knowledge base) are built locally and checked against their own pinned sha256. Each dataset's licence and
citation are printed.

:func:`data_dir` resolves a dataset's folder: ``$CMIKIT_DATA/<name>`` when ``CMIKIT_DATA`` is set (a folder
holding ``awa2/``, ``mediq/``, ``sami-tldr/``: copies you already have), else the fetched copy in the cache.
A dataset found in neither raises :class:`DataFileError` saying which command fetches it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cmikit.harness.embedded import cache_root, sha256_file
from cmikit.harness.errors import DataFileError

MANIFEST = Path(__file__).resolve().with_name("datasets.json")
DATA_ENV = "CMIKIT_DATA"
CHUNK = 1 << 16
ATTEMPTS = 3
TIMEOUT_S = 60.0

# The 20 classes C-IP plays, as 1-based rows of AwA2's predicate matrix (the order of AwA2's classes.txt,
# which the C-IP release does not include). The built file's pinned sha256 checks this mapping.
AWA2_CLASS_ROWS = {
    "giraffe": 31, "zebra": 38, "elephant": 19, "killer whale": 3, "dalmatian": 5, "polar bear": 45,
    "giant panda": 39, "hippopotamus": 14, "rhinoceros": 28, "lion": 43, "tiger": 13, "blue whale": 9,
    "walrus": 47, "grizzly bear": 2, "siamese cat": 10, "cow": 49, "german shepherd": 8, "gorilla": 20,
    "dolphin": 50, "moose": 16,
}
AWA2_SOURCE = ("Animals with Attributes 2 (Osherson et al. 1991; Kemp et al. 2006; Lampert et al. 2009), binary "
               "predicate matrix; the 20 classes used by Conformal Information Pursuit (Chan et al., 2025) for "
               "20 Questions.")


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the dataset folder
    url: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DerivedFile:
    path: str
    builder: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    source: str
    licence: str
    citation: str
    files: tuple[DataFile, ...]
    derived: tuple[DerivedFile, ...] = ()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def paths(self) -> list[str]:
        return [f.path for f in self.files] + [d.path for d in self.derived]


def load_manifest(path: str | Path | None = None) -> dict[str, Dataset]:
    """The datasets of a manifest file (the built-in :data:`MANIFEST` unless ``path`` is given)."""
    from cmikit.harness.schemas import Manifest, load_json

    path = Path(path) if path is not None else MANIFEST
    # Dataset names become folder names and file paths are joined under them: the schema allows plain names
    # and relative paths that stay inside the dataset folder only (no "../", no absolute paths).
    raw = load_json(path, Manifest, what="dataset manifest")
    out = {}
    for name, entry in raw.datasets.items():
        files = tuple(DataFile(f.path, f.url, f.size, f.sha256.lower()) for f in entry.files)
        derived = tuple(DerivedFile(d.path, d.builder, d.size, d.sha256.lower()) for d in entry.derived)
        out[name] = Dataset(name, entry.description, entry.source, entry.licence, entry.citation, files, derived)
    return out


def cache_data_root() -> Path:
    return cache_root() / "data"


def _names(datasets: Iterable[str]) -> str:
    return ", ".join(datasets)


def _check_name(name: str, datasets: dict[str, Dataset]) -> Dataset:
    if name not in datasets:
        raise DataFileError(f"unknown dataset {name!r}; known datasets: {_names(datasets)} (`cmikit data list`).")
    return datasets[name]


def is_fetched(folder: Path, dataset: Dataset) -> bool:
    """Every file of ``dataset`` is present in ``folder`` with its pinned size."""
    pinned = [(f.path, f.size) for f in dataset.files] + [(d.path, d.size) for d in dataset.derived]
    for rel, size in pinned:
        try:
            if (folder / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def data_dir(name: str, manifest: str | Path | None = None) -> Path:
    """The folder of dataset ``name``: ``$CMIKIT_DATA/<name>`` if ``CMIKIT_DATA`` is set and holds it, else the
    fetched copy in ``$CMIKIT_CACHE/data/<name>``; :class:`DataFileError` (saying how to get it) otherwise."""
    datasets = load_manifest(manifest)
    dataset = _check_name(name, datasets)
    env = os.environ.get(DATA_ENV)
    if env:
        folder = Path(env).expanduser() / name
        if folder.is_dir():
            return folder
    folder = cache_data_root() / name
    if is_fetched(folder, dataset):
        return folder
    where = f"not in ${DATA_ENV} ({Path(env).expanduser()}) and " if env else ""
    state = "incomplete" if folder.is_dir() else "not fetched"
    raise DataFileError(f"dataset {name!r} is {where}{state} in {folder}; run `cmikit data fetch {name}` "
                        f"(or set {DATA_ENV} to a folder holding {name}/).")


def data_file(name: str, relative: str) -> Path:
    """A file of dataset ``name`` (see :func:`data_dir`); :class:`DataFileError` naming it if it is missing."""
    path = data_dir(name) / relative
    if not path.is_file():
        raise DataFileError(f"missing from dataset {name!r}; run `cmikit data fetch {name}` for a complete copy.",
                            path=path)
    return path


# ------------------------------------------------------------------------------------------------ download
def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, file=sys.stderr, leave=True)


def _transfer(item: DataFile, part: Path, bar) -> None:
    """Append the rest of ``item`` to ``part`` (a ``Range`` request when ``part`` holds a prefix)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(item.url, headers={"User-Agent": "cmikit-data"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        status = getattr(response, "status", 200)
        if have and status != 206:  # the server ignored the range: start over
            bar.update(-have)
            have = 0
        with open(part, "ab" if have else "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
                if out.tell() > item.size:
                    break


def _download(item: DataFile, dest: Path, bar) -> None:
    part = dest.with_name(dest.name + ".part")
    if part.exists() and part.stat().st_size > item.size:
        bar.update(-part.stat().st_size)
        part.unlink()
    last: Exception | None = None
    for _attempt in range(ATTEMPTS):
        if part.exists() and part.stat().st_size >= item.size:
            break
        try:
            _transfer(item, part, bar)
        except urllib.error.HTTPError as err:
            if err.code == 416 and part.exists():  # range not satisfiable: the part is stale; start over
                bar.update(-part.stat().st_size)
                part.unlink()
                last = err
                continue
            raise DataFileError(f"download of {item.url} failed (HTTP {err.code} {err.reason}); the source may "
                                f"have moved: copy the file there yourself or report it.", path=dest) from None
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as err:
            last = err  # a dropped connection: the .part file keeps what arrived; try again from there
    size = part.stat().st_size if part.exists() else 0
    if size < item.size:
        reason = getattr(last, "reason", None) or last or "the server closed the connection early"
        kept = f"{size} of {item.size} bytes kept in {part.name}; " if size else ""
        raise DataFileError(f"download of {item.url} failed ({reason}); {kept}rerun the same command to resume.",
                            path=dest) from None
    actual = sha256_file(part) if size == item.size else None
    if actual != item.sha256:
        bar.update(-size)
        part.unlink(missing_ok=True)
        got = f"sha256 {actual}" if actual else f"{size} bytes, expected {item.size}"
        raise DataFileError(f"download of {item.url} does not match its pinned checksum ({got}, expected sha256 "
                            f"{item.sha256}); the file was not kept. The source changed or the transfer was "
                            f"corrupted: rerun, or report it if it persists.", path=dest)
    os.replace(part, dest)


def _build_awa2_twenty_questions(folder: Path) -> bytes:
    """The 20-class AwA2 knowledge base ``{"source", "questions", "classes", "answers"}`` in the format of
    :mod:`cmikit.cip.knowledge`, from the predicate matrix, the question phrasings and the class list."""
    rows = [[int(v) for v in line.split()] for line in (folder / "predicate-matrix-binary.txt").read_text().splitlines()
            if line.strip()]
    questions = [line.strip() for line in (folder / "queries.txt").read_text().splitlines() if line.strip()]
    classes = [line.split("\t")[-1].strip().replace("+", " ")
               for line in (folder / "classes20.txt").read_text().splitlines() if line.strip()]
    answers = {}
    for name in classes:
        if name not in AWA2_CLASS_ROWS:
            raise DataFileError(f"class {name!r} has no known AwA2 row", path=folder / "classes20.txt")
        answers[name] = rows[AWA2_CLASS_ROWS[name] - 1]
    data = {"source": AWA2_SOURCE, "questions": questions, "classes": classes, "answers": answers}
    return json.dumps(data, indent=1).encode()


BUILDERS: dict[str, Callable[[Path], bytes]] = {"awa2-twenty-questions": _build_awa2_twenty_questions}


def _build(derived: DerivedFile, folder: Path) -> None:
    dest = folder / derived.path
    if dest.is_file() and dest.stat().st_size == derived.size and sha256_file(dest) == derived.sha256:
        return
    builder = BUILDERS.get(derived.builder)
    if builder is None:
        raise DataFileError(f"unknown builder {derived.builder!r} for {derived.path}; known: {_names(BUILDERS)}.")
    data = builder(folder)
    actual = hashlib.sha256(data).hexdigest()
    if actual != derived.sha256:
        raise DataFileError(f"built file does not match its pinned checksum (sha256 {actual}, expected "
                            f"{derived.sha256}); it was not written.", path=dest)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


def fetch(name: str, *, root: str | Path | None = None, manifest: str | Path | None = None, progress: bool = True,
          out: TextIO | None = None) -> Path:
    """Download (or complete, or check) dataset ``name`` into ``root/<name>`` (default the cache's ``data/``);
    return the folder. Files already present with the pinned sha256 are kept."""
    out = out or sys.stdout
    dataset = _check_name(name, load_manifest(manifest))
    folder = Path(root if root is not None else cache_data_root()) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataFileError(f"cannot create the data folder ({err.strerror}); set CMIKIT_CACHE to a writable "
                            f"folder.", path=folder) from None
    todo, have = [], 0
    for item in dataset.files:
        dest = folder / item.path
        if dest.is_file() and dest.stat().st_size == item.size and sha256_file(dest) == item.sha256:
            have += item.size
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        have += min(part.stat().st_size, item.size) if part.exists() else 0
        todo.append((item, dest))
    print(f"{name}: {len(dataset.files) - len(todo)} of {len(dataset.files)} files present; "
          f"{'downloading ' + str(len(todo)) if todo else 'nothing to download'} -> {folder}", file=out, flush=True)
    with _progress(dataset.size, have, name, progress and bool(todo)) as bar:
        for item, dest in todo:
            _download(item, dest, bar)
    for derived in dataset.derived:
        _build(derived, folder)
    print(f"{name}: ready in {folder}", file=out)
    print(f"  source:   {dataset.source}", file=out)
    print(f"  licence:  {dataset.licence}", file=out)
    print(f"  citation: {dataset.citation}", file=out, flush=True)
    return folder


def describe(manifest: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per dataset: name, size, where it would be read from (or None), description, licence."""
    rows = []
    for name, dataset in load_manifest(manifest).items():
        try:
            where: Path | None = data_dir(name, manifest)
        except DataFileError:
            where = None
        rows.append({"name": name, "files": len(dataset.files) + len(dataset.derived), "bytes": dataset.size,
                     "location": where, "description": dataset.description, "licence": dataset.licence})
    return rows


def verify(manifest: str | Path | None = None, out: TextIO | None = None) -> list[str]:
    """Hash every fetched file of the data cache in full against its pinned sha256; print one line per
    dataset and return the problems (empty when all match)."""
    out = out or sys.stdout
    problems = []
    for name, dataset in load_manifest(manifest).items():
        folder = cache_data_root() / name
        if not folder.is_dir():
            print(f"data/{name}: not fetched", file=out)
            continue
        bad = []
        pins = [(f.path, f.size, f.sha256) for f in dataset.files] + [(d.path, d.size, d.sha256)
                                                                      for d in dataset.derived]
        for rel, size, sha in pins:
            path = folder / rel
            try:
                ok = path.stat().st_size == size and sha256_file(path) == sha
            except OSError:
                ok = False
            if not ok:
                bad.append(rel)
        if bad:
            problems.append(f"data/{name}: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} missing or "
                            f"changed (run `cmikit data fetch {name}` to repair)")
        print(f"data/{name}: {'ok' if not bad else 'DAMAGED'} ({len(pins) - len(bad)} of {len(pins)} files match "
              f"their pinned sha256)", file=out)
    return problems
