"""Start-up checks shared by the ``sami`` commands: every option is validated before a model loads, and
every failure is a :class:`cmikit.harness.errors.CmikitError` naming the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmikit.harness.config import check_at_least, check_choice, check_range
from cmikit.harness.errors import ConfigError, ModelRefError

DTYPES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")
BACKENDS = ("transformers", "vllm")


def check_model_ref(key: str, ref: str | None, allow_none: bool = False) -> None:
    """``ref`` names a model that can exist: a known alias, an existing folder or .gguf, or a Hub id whose owner
    part is not a local folder (``runs/my-modl`` with ``runs/`` present is a mistyped folder, not a Hub id)."""
    from cmikit.harness.models import ModelLoadError, resolve_model_ref

    if ref is None and allow_none:
        return
    try:
        resolved = resolve_model_ref(ref)
    except ModelLoadError as err:
        raise ModelRefError(f"--{key} {ref!r}: {err}") from err
    if resolved.kind == "hub" and resolved.spec is None:
        owner = Path(str(ref)).expanduser().parent
        if str(owner) not in ("", ".") and owner.is_dir():
            raise ModelRefError(
                f"--{key} {ref!r}: no such model folder (its parent {owner}/ is a local folder, so this is a "
                f"mistyped path, not a Hub id); point at the folder that holds config.json.")


def check_adapter(key: str, adapter: str | None) -> None:
    if adapter is None:
        return
    p = Path(adapter).expanduser()
    if (adapter.startswith((".", "/", "~")) or p.parent.is_dir() and str(p.parent) not in ("", ".")) and \
            not (p / "adapter_config.json").is_file():
        raise ModelRefError(f"--{key} {adapter!r}: no PEFT adapter folder there (adapter_config.json missing).")
    if p.is_dir():  # adapter_config.json an object, safetensors weights with a sound header, no pickles
        from cmikit.harness.errors import DataFileError
        from cmikit.harness.schemas import check_model_folder

        try:
            check_model_folder(p, adapter=True)
        except DataFileError as err:
            raise ModelRefError(f"--{key} {adapter!r}: {err}") from None


def check_source_file(key: str, source: str | None) -> None:
    """A local query/constitution path must exist (Hub ids and ``builtin:`` names are checked when loaded)."""
    if not source:
        return
    for part in str(source).split(","):
        part = part.strip()
        if not part or part.startswith("builtin:") or part == "builtin":
            continue
        p = Path(part).expanduser()
        looks_local = part.startswith((".", "/", "~")) or p.suffix in (".json", ".jsonl", ".csv") or p.exists()
        if looks_local and not p.exists():
            raise ConfigError(f"--{key} {part}: file not found.")


def local_files(*sources: str | None) -> dict[str, str]:
    """The local files and folders among comma-separated sources (for the run fingerprint)."""
    out = {}
    for source in sources:
        for part in str(source or "").split(","):
            part = part.strip()
            if part and Path(part).expanduser().exists():
                out[part] = str(Path(part).expanduser())
    return out


def check_common(cfg: Any) -> None:
    """Checks on keys several configs share (each only when the config has it)."""
    from cmikit.sami.constitutions import NEGATIVE_MODES
    from cmikit.sami.prompts import FORMATS, TASKS

    has = lambda k: hasattr(cfg, k)  # noqa: E731
    if has("task"):
        check_choice("task", cfg.task, TASKS)
    if has("prompt_format"):
        check_choice("prompt_format", cfg.prompt_format, FORMATS)
    if has("negatives"):
        check_choice("negatives", cfg.negatives, NEGATIVE_MODES)
    if has("n_constitutions"):
        check_at_least("n_constitutions", cfg.n_constitutions, 2)
    if has("max_new_tokens"):
        check_at_least("max_new_tokens", cfg.max_new_tokens, 1)
    if has("backend"):
        check_choice("backend", cfg.backend, BACKENDS)
    if has("dtype"):
        check_choice("dtype", cfg.dtype, DTYPES)
    if has("temperature"):
        check_at_least("temperature", cfg.temperature, 0.0)
    if has("top_p"):
        check_range("top_p", cfg.top_p, 0.0, 1.0, low_open=True)
    for key in ("batch_size", "generation_batch_size", "eval_batch_size", "n_heldout", "lora_r", "lora_alpha"):
        if has(key):
            check_at_least(key, getattr(cfg, key), 1)
    if has("seed"):
        check_at_least("seed", cfg.seed, 0)
    if has("lora_dropout"):
        check_range("lora_dropout", cfg.lora_dropout, 0.0, 1.0, high_open=True)
    if has("constitutions") and cfg.constitutions != "builtin":
        check_source_file("constitutions", cfg.constitutions)
