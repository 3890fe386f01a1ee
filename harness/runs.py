"""Run identity: a run folder is a citable record, and a rerun never mixes results made under other settings.

Every resumable command opens its output folder through :func:`open_run` before it computes anything::

    with open_run(cfg.out_dir, "cip-eval", config_to_dict(cfg), keys=CIP_IDENTITY,
                  files=[kb_path], models={"predictor": cfg.model}, overwrite=cfg.overwrite):
        ...  # resume into the folder

* ``run.json`` holds the resolved config (every key), the package version that wrote it, and the *identity*:
  the settings that change results, the sha256 of every data file and the identity of every model (see
  :func:`model_identity`). Its ``fingerprint`` is the sha256 of the identity.
* The settings in the identity are an allowlist, ``keys``, kept next to each command's config (e.g.
  ``CIP_IDENTITY`` in ``cmikit.cip.evaluate``): the options that change results, by their resolved values, so a
  changed default of one of them refuses a resume too. Everything else (output paths, progress bars, batch
  sizes where results are batch-invariant, and any field a new ``transformers.TrainingArguments`` adds) is
  saved in the config but not fingerprinted. The package version is not in the identity: an upgrade alone
  does not refuse a resume.
* A folder whose ``run.json`` has another fingerprint is refused with :class:`RunConflictError` naming the
  keys that differ and the two ways forward: another ``--out_dir``, or ``--overwrite`` to start over.
  ``overwrite=True`` first deletes the files the toolkit writes (:data:`RUN_OUTPUTS`), only in a folder
  whose ``run.json`` this toolkit wrote (kind, fingerprint, identity); other files are kept.
* One run per folder at a time: an exclusive ``flock`` on ``.lock`` (released by the OS when the process dies,
  so a ``kill -9`` never leaves a stale lock); a second run is refused with the first one's pid.

Under ``accelerate launch`` only the main process opens the run (``main_process=False`` on the others makes
:func:`open_run` a no-op that still yields the :class:`Run`), so the lock is held once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmikit.harness.errors import RunConflictError

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
# Files above this size are identified by size plus the sha256 of their first and last 16 MiB (model weights).
FULL_HASH_LIMIT = 512 << 20
_EDGE = 16 << 20
_digest_cache: dict[tuple[str, int, int], str] = {}
_RACY_NS = 2_000_000_000


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("cmikit")
    except Exception:  # not installed (running from a source tree)
        return "unknown"


def file_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of a file (memoised per path, size and mtime); for files over
    :data:`FULL_HASH_LIMIT`, ``sha256-edges:<hex>`` over the size and the first and last 16 MiB."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _digest_cache:
        return _digest_cache[key]
    if st.st_size <= FULL_HASH_LIMIT:
        from cmikit.harness.embedded import sha256_file

        out = f"sha256:{sha256_file(path)}"
    else:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            digest.update(str(st.st_size).encode())
            digest.update(handle.read(_EDGE))
            handle.seek(st.st_size - _EDGE)
            digest.update(handle.read(_EDGE))
        out = f"sha256-edges:{digest.hexdigest()}"
    if time.time_ns() - st.st_mtime_ns > _RACY_NS:  # a file written just now may change again within the same
        _digest_cache[key] = out                     # mtime tick, at the same size: only memoise settled files
    return out


def folder_digest(path: str | Path, patterns: Iterable[str] = ("*.json", "*.safetensors", "*.model", "*.txt",
                                                                 "*.gguf", "*.bin")) -> str:
    """One digest over the files of a model or adapter folder (names and :func:`file_digest` of each)."""
    path = Path(path)
    files = sorted({p for pattern in patterns for p in path.glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}={file_digest(p)}\n".encode())
    return f"sha256:{digest.hexdigest()}"


def model_identity(ref: str | None, adapter: str | None = None, revision: str | None = None) -> dict[str, Any]:
    """What identifies a model's weights without loading it: the reference, plus the pinned checksum for the
    embedded model, the folder's file digests for a local checkpoint or ``.gguf``, or the revision for a Hub
    id (``"main"`` unless given: a Hub id whose branch moves is only as fixed as its revision). ``adapter``
    (a PEFT folder) is digested the same way. Unknown references are returned as given (the loader reports
    them)."""
    from cmikit.harness.models import ModelLoadError, resolve_model_ref

    out: dict[str, Any] = {"ref": ref}
    if ref is None:
        return out
    try:
        resolved = resolve_model_ref(ref, check=False)  # junk weights still have an identity; the loader refuses
    except ModelLoadError:
        return out
    if resolved.kind == "embedded":
        from cmikit.harness.embedded import GGUF_SHA256

        out["weights"] = f"sha256:{GGUF_SHA256}"
    elif resolved.kind == "gguf":
        out["weights"] = file_digest(resolved.path)
    elif resolved.kind == "folder":
        out["path"] = str(Path(resolved.path).resolve())
        out["weights"] = folder_digest(resolved.path)
    else:
        out["hub_id"] = resolved.path
        out["revision"] = revision or "main"
    if adapter:
        out["adapter"] = folder_digest(adapter) if Path(adapter).is_dir() else adapter
    return out


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _short(value: Any, width: int = 40) -> str:
    text = "(absent)" if value is _MISSING else _canonical(value)
    return text if len(text) <= width else text[: width - 3] + "..."


_MISSING = object()


def describe_differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 4) -> str:
    """``key: old -> new`` for the keys that differ between two identities (at most ``limit``, then a count)."""
    a, b = _flatten(old), _flatten(new)
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k, _MISSING) != b.get(k, _MISSING)]
    parts = [f"{k}: {_short(a.get(k, _MISSING))} -> {_short(b.get(k, _MISSING))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append(f"and {len(keys) - limit} more")
    return "; ".join(parts)


@dataclass
class Run:
    """An open run folder. ``identity`` is what the fingerprint covers; ``config`` is every setting."""

    out_dir: Path
    kind: str
    config: dict[str, Any]
    identity: dict[str, Any]
    fingerprint: str
    resumed: bool = False
    _lock_fd: int | None = field(default=None, repr=False)

    def path(self, *parts: str) -> Path:
        return self.out_dir.joinpath(*parts)


def build_identity(kind: str, settings: Mapping[str, Any], keys: Iterable[str],
                   files: Mapping[str, str | Path] | Iterable[str | Path] = (),
                   models: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The fingerprinted part of ``run.json``: the ``keys`` of ``settings`` (the allowlist; a listed key that
    ``settings`` lacks, e.g. a ``TrainingArguments`` field a newer transformers removed, is left out: the tests
    check each command's allowlist against its config), the file digests and the model identities."""
    keys = sorted(k for k in set(keys) if k in settings)
    if isinstance(files, Mapping):
        named = {str(name): p for name, p in files.items() if p is not None}
    else:
        named = {str(p): p for p in files if p is not None}
    digests = {}
    for name, p in sorted(named.items()):
        p = Path(p)
        digests[name] = folder_digest(p) if p.is_dir() else file_digest(p) if p.is_file() else "(missing)"
    models_id = {}
    for name, model in (models or {}).items():
        models_id[name] = model if isinstance(model, Mapping) else model_identity(model)
    return {
        "kind": kind,
        "settings": {k: settings[k] for k in keys},
        "files": digests,
        "models": models_id,
    }


def _lock(out_dir: Path, out_flag: str = "--out_dir") -> int:
    """An exclusive ``flock`` on ``out_dir/.lock``. The file is opened without following symlinks and must be a
    regular file of ours to write: a ``.lock`` planted as a symlink (or a fifo, a device) in a shared runs
    folder must not make this run truncate or write a file elsewhere."""
    path = out_dir / LOCK_FILE
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EMLINK):
            raise RunConflictError(f"{path} is a symbolic link, not a lock file this toolkit made; remove it (or "
                                   f"choose another {out_flag}) and rerun.") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise RunConflictError(f"{path} is not a plain lock file (a link, fifo or device); remove it (or choose "
                               f"another {out_flag}) and rerun.")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunConflictError(
            f"{out_dir} is in use by another run ({holder}); wait for it to finish or choose another {out_flag}."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# What ``--overwrite`` may delete: the files and folders the toolkit's run commands write into a run folder.
# Anything else a user put there is kept (and named).
RUN_OUTPUTS = (
    RUN_FILE, "records*.jsonl", "records.jsonl.tmp", "records.rejected.jsonl", "summary.json", "task.json",
    "config.json", "results.json", "win_rates.json", "bench.json", "thresholds.json", "thresholds", "*.png",
    "iteration-*", "judgements*.jsonl", "samples", "eval", "judge", "model", "merged", "train", f".{RUN_FILE}.*.tmp",
    ".records*.repair.tmp",
)


def toolkit_outputs(out_dir: Path) -> tuple[list[Path], list[Path]]:
    """``(files the toolkit writes, everything else)`` directly in ``out_dir`` (``.lock`` in neither)."""
    ours, others = [], []
    for child in sorted(out_dir.iterdir()):
        if child.name == LOCK_FILE:
            continue
        (ours if any(fnmatch.fnmatchcase(child.name, pattern) for pattern in RUN_OUTPUTS) else others).append(child)
    return ours, others


def _clear(out_dir: Path) -> list[Path]:
    """Delete the toolkit's outputs in ``out_dir``; return what was kept."""
    ours, others = toolkit_outputs(out_dir)
    for child in ours:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return others


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_run(out_dir: str | Path, out_flag: str = "output folder") -> dict[str, Any] | None:
    """The ``run.json`` of a folder (checked against :class:`cmikit.harness.schemas.RunFile`), or None. One
    that this toolkit did not write, or that is damaged, is refused with how to recover; nothing is deleted."""
    from cmikit.harness.errors import DataFileError
    from cmikit.harness.schemas import RunFile, load_json

    path = Path(out_dir) / RUN_FILE
    if not path.is_file() and not path.is_symlink():
        return None
    try:
        return load_json(path, RunFile, what="run.json written by cmikit").model_dump()
    except DataFileError as err:
        raise RunConflictError(
            f"{err}. This folder's {RUN_FILE} was not written by cmikit or is damaged, so the run cannot be "
            f"resumed or overwritten; keep it by renaming the folder (mv {path.parent} {path.parent}.bad) and "
            f"rerun to start over, or choose another {out_flag}.") from None


_TMP_GLOB = f".{RUN_FILE}.*.tmp"


def _check_folder(out_dir: Path, *, kind: str, identity: dict[str, Any], fingerprint: str, overwrite: bool,
                  overwrite_flag: str, out_flag: str) -> tuple[dict[str, Any] | None, bool]:
    """Refuse (:class:`RunConflictError`) or return ``(run.json to resume or None, whether to empty the
    folder first)``; changes nothing."""
    if not out_dir.is_dir():
        return None, False
    leftovers = set(out_dir.glob(_TMP_GLOB))
    others = [c for c in out_dir.iterdir() if c.name != LOCK_FILE and c not in leftovers]
    if overwrite:
        if others and read_run(out_dir, out_flag) is None:
            raise RunConflictError(
                f"{out_dir} holds files but no {RUN_FILE}, so it is not a run folder; {overwrite_flag} only "
                f"empties run folders. Delete it yourself or choose another {out_flag}."
            )
        return None, bool(others)
    existing = read_run(out_dir, out_flag)
    if existing is not None:
        if existing.get("fingerprint") != fingerprint:
            diff = describe_differences(existing.get("identity", {}), identity)
            raise RunConflictError(
                f"{out_dir} holds a {existing.get('kind', kind)} run made with other settings ({diff}); "
                f"use another {out_flag}, or {overwrite_flag} to start over."
            )
        return existing, False
    if others:
        raise RunConflictError(
            f"{out_dir} already holds files but no {RUN_FILE} (an older version's run or another tool's "
            f"folder), so its results cannot be matched to these settings; use another {out_flag}, or "
            f"delete the folder."
        )
    return None, False


@contextlib.contextmanager
def open_run(out_dir: str | Path, kind: str, config: Mapping[str, Any], *, keys: Iterable[str],
             files: Mapping[str, str | Path] | Iterable[str | Path] = (), models: Mapping[str, Any] | None = None,
             overwrite: bool = False, main_process: bool = True, overwrite_flag: str = "--overwrite",
             out_flag: str = "--out_dir") -> Iterator[Run]:
    """Open (create, resume or refuse) a run folder; see the module docstring. The lock is held until the
    ``with`` block ends."""
    out_dir = Path(out_dir)
    config = dict(config)
    identity = build_identity(kind, config, keys, files, models)
    fingerprint = hashlib.sha256(_canonical(identity).encode()).hexdigest()
    run = Run(out_dir, kind, config, identity, fingerprint)
    if not main_process:
        yield run
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise RunConflictError(f"{out_flag} {out_dir} is a file, not a folder; choose another {out_flag}.")
    check = dict(kind=kind, identity=identity, fingerprint=fingerprint, overwrite=overwrite,
                 overwrite_flag=overwrite_flag, out_flag=out_flag)
    # Refuse before touching anything (no .lock written into a folder that is not this run's); checked again
    # under the lock below.
    _check_folder(out_dir, **check)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        run._lock_fd = _lock(out_dir, out_flag)
    except OSError as err:
        raise RunConflictError(f"{out_flag} {out_dir} cannot be used as a run folder ({err.strerror or err}); "
                               f"choose another {out_flag}.") from None
    try:
        existing, clear = _check_folder(out_dir, **check)  # again, now that the folder is ours
        for leftover in out_dir.glob(_TMP_GLOB):  # from a run killed while writing run.json
            leftover.unlink(missing_ok=True)
        if clear:
            kept = _clear(out_dir)
            if kept:
                import sys

                print(f"note: {overwrite_flag} kept {len(kept)} file(s) cmikit does not write: "
                      f"{', '.join(p.name for p in kept[:5])}", file=sys.stderr)
        run.resumed = existing is not None
        record = {"kind": kind, "fingerprint": fingerprint, "identity": identity, "config": config,
                  "package": package_version(),
                  "created": existing.get("created") if existing else time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if existing and existing.get("package", package_version()) != package_version():
            record["created_by_package"] = existing.get("created_by_package", existing["package"])
        if run.resumed:
            record["resumed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_json_atomic(out_dir / RUN_FILE, record)
        yield run
    finally:
        _unlock(run._lock_fd)
        run._lock_fd = None


def writable_problem(path: str | Path, folder: bool = False) -> str | None:
    """Why ``path`` (a file to write, or with ``folder`` a folder to write into) cannot be written, or None.
    Creates nothing: the nearest existing ancestor must be a folder this process may write."""
    path = Path(path).expanduser()
    if path.exists():
        if folder != path.is_dir():
            return f"it is {'a file' if folder else 'a folder'}"
        target = path
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
        if not target.is_dir():
            return f"{target} is not a folder"
    if not os.access(target, os.W_OK | (os.X_OK if target.is_dir() else 0)):
        return f"{target} is not writable"
    return None


def check_writable(flag: str, path: str | Path, folder: bool = False) -> Path:
    """``path`` when it can be written (see :func:`writable_problem`), else :class:`ConfigError` naming the
    option: checked at start-up, so that nothing computed is lost at the end."""
    from cmikit.harness.errors import ConfigError

    problem = writable_problem(path, folder)
    if problem:
        raise ConfigError(f"{flag} {path}: cannot write there ({problem}); choose another path.")
    return Path(path)


def usable_cache_dir(path: Path) -> str | None:
    """None when ``path`` (a cache folder) can be created and written, else the reason (a read-only or
    forbidden ``CMIKIT_CACHE``, a full disk): callers then run without caching and say so once."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"{err.strerror or err}"
    return None
