"""LLaDA and Dream on transformers' own model classes: the released formats, mapped; no remote code.

The two diffusion LMs this toolkit's decoders were published on are standard decoders underneath:

* **LLaDA** (``GSAI-ML/LLaDA-8B-Instruct``, ``model_type="llada"``): a Llama-style decoder (RMSNorm, SwiGLU,
  rotary embeddings on the two halves of each head, no biases) written with OLMo's parameter and config
  names, attending both ways; logits at position i predict token i.
* **Dream** (``Dream-org/Dream-v0-Instruct-7B``, ``model_type="Dream"``): Qwen2 (biased q/k/v, unbiased
  output projection), Qwen2's own parameter names, attending both ways; logits at position i-1 predict
  token i.

So both run on :class:`transformers.LlamaForCausalLM` / :class:`transformers.Qwen2ForCausalLM` with
``config.is_causal = False`` (transformers' supported switch: its mask builder then makes a bidirectional
mask, in eager, SDPA and flash attention alike) and every attention module's ``is_causal`` set to ``False``
(see :func:`set_bidirectional`). The native config also carries what the decoding adapter reads:
``is_bidirectional = True``, ``mask_token_id``, ``shift_logits`` (LLaDA False, Dream True) and
``diffusion_format`` (``"llada"`` / ``"dream"``, where the weights came from).

What is mapped (the names were read from the released ``config.json``, modelling files and safetensors index;
the mapping is written here, not copied):

=====================================================  =========================================
LLaDA parameter (``model.transformer.``...)              Llama parameter
=====================================================  =========================================
``wte``                                                  ``model.embed_tokens``
``blocks.N.attn_norm``                                   ``model.layers.N.input_layernorm``
``blocks.N.{q,k,v}_proj``                                ``model.layers.N.self_attn.{q,k,v}_proj``
``blocks.N.attn_out``                                    ``model.layers.N.self_attn.o_proj``
``blocks.N.ff_norm``                                     ``model.layers.N.post_attention_layernorm``
``blocks.N.ff_proj`` (the SiLU-activated branch)         ``model.layers.N.mlp.gate_proj``
``blocks.N.up_proj``                                     ``model.layers.N.mlp.up_proj``
``blocks.N.ff_out``                                      ``model.layers.N.mlp.down_proj``
``ln_f``                                                 ``model.norm``
``ff_out``                                               ``lm_head``
=====================================================  =========================================

LLaDA config keys: ``d_model`` → ``hidden_size``, ``n_layers`` → ``num_hidden_layers``, ``n_heads`` →
``num_attention_heads``, ``n_kv_heads`` → ``num_key_value_heads``, ``mlp_hidden_size`` (else ``mlp_ratio *
d_model``) → ``intermediate_size``, ``embedding_size`` (else ``vocab_size``) → ``vocab_size``,
``max_sequence_length`` → ``max_position_embeddings``, ``rope_theta``, ``rms_norm_eps``, ``weight_tying`` →
``tie_word_embeddings``; options the Llama layer cannot express (ALiBi, q/k norms, biases, OLMo's sequential
block, input scaling, logit scaling, block groups) are refused with a message. LLaDA's rotary embedding rotates
the two halves of each head (like Llama's ``rotate_half``), so q/k need no permutation. Dream's parameters
already have Qwen2's names and its config Qwen2's keys; only ``model_type``, ``architectures`` and ``auto_map``
change.

Numerics: at fp32 the native models equal an independent forward written from the equations (tests). In bf16
they differ from the remote code by rounding only: LLaDA's code applies the rotary embedding in fp32
(``rope_full_precision``), transformers in the activation dtype. With left padding the native model hides pad
keys through the mask and counts positions from each row's first real token; rotary attention depends only
on position differences, so real tokens see the same scores as an unpadded run.

:func:`native_load_kwargs` gives ``from_pretrained`` what it needs to load a released folder directly (the
native config and transformers' ``key_mapping``); :func:`convert_checkpoint` writes the native checkpoint once
(safetensors shards with the native names, a config that loads without remote code, the tokenizer files
without ``auto_map``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from cmikit.harness.models import ModelLoadError


class NativeFormatError(ModelLoadError, ValueError):
    """A LLaDA / Dream checkpoint option the native classes cannot express; the message says what to do."""


#: LLaDA → Llama parameter names: ordered ``(pattern, replacement)`` rules, each applied once, in order (the
#: top-level ``ff_out`` must be renamed before the per-block ``.ff_out.`` rule). The same table feeds
#: transformers' ``key_mapping`` (which applies every rule in turn) and the converter.
LLADA_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^model\.transformer\.wte\.", "model.embed_tokens."),
    (r"^model\.transformer\.ln_f\.", "model.norm."),
    (r"^model\.transformer\.ff_out\.", "lm_head."),
    (r"^model\.transformer\.blocks\.", "model.layers."),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.ff_norm\.", ".post_attention_layernorm."),
    (r"\.q_proj\.", ".self_attn.q_proj."),
    (r"\.k_proj\.", ".self_attn.k_proj."),
    (r"\.v_proj\.", ".self_attn.v_proj."),
    (r"\.attn_out\.", ".self_attn.o_proj."),
    (r"\.ff_proj\.", ".mlp.gate_proj."),
    (r"\.up_proj\.", ".mlp.up_proj."),
    (r"\.ff_out\.", ".mlp.down_proj."),
)

#: The released ``config.json`` of LLaDA-8B-Instruct and Dream-v0-Instruct-7B (shapes, ids, options): the GPU
#: check builds random models of these shapes, and the tests shrink them (same keys) for tiny checkpoints.
RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    "llada": {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
        "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096,
        "mlp_hidden_size": 12288, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
        "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16",
        "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": 500000.0, "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
        "vocab_size": 126464, "weight_tying": False,
    },
    "dream": {
        "architectures": ["DreamModel"], "attention_dropout": 0.0,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
        "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
        "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream",
        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "pad_token_id": 151643,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.2",
        "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
    },
}
FORMATS = ("llada", "dream")
SHIFT_LOGITS = {"llada": False, "dream": True}
#: Config keys of LLaDA whose released value is the only one the Llama layer expresses.
_LLADA_REQUIRED = {
    "block_type": ("llama",),
    "layer_norm_type": ("rms",),
    "activation_type": ("silu",),
    "rope": (True,),
    "alibi": (False, None),
    "attention_layer_norm": (False, None),
    "input_emb_norm": (False, None),
    "scale_logits": (False, None),
    "include_bias": (False, None),
    "include_qkv_bias": (False, None),
    "bias_for_layer_norm": (False, None),
    "layer_norm_with_affine": (True, None),
    "block_group_size": (1, None),
}
#: Keys of the released configs that are not carried into the native one.
_DROP = {"auto_map", "architectures", "model_type", "transformers_version", "torch_dtype", "_name_or_path"}


def released_format(config: dict[str, Any] | None) -> str | None:
    """``"llada"`` / ``"dream"`` for a released-format ``config.json`` (as a dict), ``None`` for anything else
    (a converted native checkpoint included)."""
    if not isinstance(config, dict):
        return None
    model_type = str(config.get("model_type", "")).lower()
    return model_type if model_type in FORMATS else None


def _refuse(fmt: str, key: str, value: Any, allowed) -> NativeFormatError:
    return NativeFormatError(
        f"{fmt} config.json: {key}={value!r} has no equivalent in transformers' native class (supported: "
        f"{', '.join(repr(a) for a in allowed if a is not None)}); load it with trust_remote_code=True "
        "(--trust-remote-code) to run the checkpoint's own code."
    )


def _llada_config(raw: dict[str, Any]):
    from transformers import LlamaConfig

    missing = [k for k in ("d_model", "n_heads", "n_layers", "vocab_size") if k not in raw]
    if missing:
        raise NativeFormatError(f"llada config.json lacks {', '.join(missing)}; it is not a complete LLaDA config.")
    for key, allowed in _LLADA_REQUIRED.items():
        if raw.get(key) not in allowed:
            raise _refuse("llada", key, raw.get(key), allowed)
    d_model, n_heads = int(raw["d_model"]), int(raw["n_heads"])
    n_kv = raw.get("n_kv_heads")
    if n_kv is None:
        n_kv = 1 if raw.get("multi_query_attention") else n_heads
    hidden = raw.get("mlp_hidden_size") or int(raw.get("mlp_ratio", 4)) * d_model
    tied = bool(raw.get("weight_tying", False))
    return LlamaConfig(
        vocab_size=int(raw.get("embedding_size") or raw["vocab_size"]),
        hidden_size=d_model,
        intermediate_size=int(hidden),
        num_hidden_layers=int(raw["n_layers"]),
        num_attention_heads=n_heads,
        num_key_value_heads=int(n_kv),
        head_dim=d_model // n_heads,
        hidden_act="silu",
        max_position_embeddings=int(raw.get("max_sequence_length", 4096)),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        rope_parameters={"rope_type": "default", "rope_theta": float(raw.get("rope_theta", 10000.0))},
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=float(raw.get("attention_dropout", 0.0) or 0.0),
        tie_word_embeddings=tied,
        pad_token_id=raw.get("pad_token_id"),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
    )


def _dream_config(raw: dict[str, Any]):
    from transformers import Qwen2Config

    if raw.get("use_sliding_window"):
        raise _refuse("dream", "use_sliding_window", True, (False,))
    missing = [k for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size") if k not in raw]
    if missing:
        raise NativeFormatError(f"dream config.json lacks {', '.join(missing)}; it is not a complete Dream config.")
    kept = {k: v for k, v in raw.items() if k not in _DROP and k != "mask_token_id"}
    return Qwen2Config(**kept)


def native_config(raw: dict[str, Any]):
    """The transformers config (``LlamaConfig`` / ``Qwen2Config``) of a released LLaDA / Dream ``config.json``."""
    fmt = released_format(raw)
    if fmt is None:
        raise NativeFormatError(f"model_type={raw.get('model_type')!r} is neither LLaDA ('llada') nor Dream ('Dream').")
    config = _llada_config(raw) if fmt == "llada" else _dream_config(raw)
    config.architectures = ["LlamaForCausalLM" if fmt == "llada" else "Qwen2ForCausalLM"]
    config.is_causal = False  # transformers' mask builder makes a bidirectional mask (masking_utils)
    config.is_bidirectional = True
    config.shift_logits = SHIFT_LOGITS[fmt]
    config.diffusion_format = fmt
    config.use_cache = False  # the decoding loop hands its own cache object when it wants one
    if raw.get("mask_token_id") is not None:
        config.mask_token_id = int(raw["mask_token_id"])
    if raw.get("torch_dtype") or raw.get("dtype"):
        config.dtype = raw.get("dtype") or raw.get("torch_dtype")
    return config


def native_class(fmt: str):
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    return LlamaForCausalLM if fmt == "llada" else Qwen2ForCausalLM


def key_mapping(fmt: str) -> dict[str, str] | None:
    """transformers' ``from_pretrained(key_mapping=...)`` for ``fmt`` (``None``: the names are native already)."""
    return dict(LLADA_KEY_RULES) if fmt == "llada" else None


def native_name(name: str, fmt: str) -> str:
    """The native parameter name of a released one (the converter's renaming; same rules as :func:`key_mapping`)."""
    if fmt != "llada":
        return name
    for pattern, replacement in LLADA_KEY_RULES:
        name = re.sub(pattern, replacement, name, count=1)
    return name


def native_load_kwargs(raw: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(model class, from_pretrained kwargs)`` that load a released-format checkpoint natively."""
    fmt = released_format(raw)
    kwargs: dict[str, Any] = {"config": native_config(raw), "trust_remote_code": False}
    mapping = key_mapping(fmt)
    if mapping:
        kwargs["key_mapping"] = mapping
    return native_class(fmt), kwargs


def set_bidirectional(model) -> None:
    """Make every attention module of a transformers decoder attend both ways.

    ``config.is_causal = False`` already turns the mask bidirectional; the modules' own ``is_causal`` flag is
    what SDPA / flash attention fall back to when no mask is passed, so it is cleared too."""
    model.config.is_causal = False
    for module in model.modules():
        if hasattr(module, "is_causal") and isinstance(module.is_causal, bool):
            module.is_causal = False


def is_native_diffusion(model) -> bool:
    config = getattr(model, "config", None)
    return bool(getattr(config, "is_bidirectional", False)) and getattr(config, "is_causal", True) is False


# -- tokenizer -----------------------------------------------------------------------------------------------------
def _tokenizer_class(name: str | None):
    """transformers' tokenizer class called ``name``, or ``None`` (no name, or a class only remote code has)."""
    if not name:
        return None
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    try:
        return tokenizer_class_from_name(name)
    except Exception:  # noqa: BLE001 - any lookup failure means "not a transformers class"
        return None


def load_tokenizer(source: str, **kwargs):
    """The checkpoint's tokenizer without its remote code: the class its ``tokenizer_config.json`` names when
    transformers has it, else the fast tokenizer from ``tokenizer.json`` (Dream's ``DreamTokenizer`` is a copy
    of Qwen2's, whose ``tokenizer.json`` ships beside it). Not ``AutoTokenizer``: it would read the released
    ``config.json``, whose model type transformers does not know."""
    from transformers import PreTrainedTokenizerFast

    cls = _tokenizer_class(_tokenizer_config(source, kwargs.get("revision")).get("tokenizer_class"))
    return (cls or PreTrainedTokenizerFast).from_pretrained(source, **kwargs)


def _tokenizer_config(source: str, revision: str | None = None) -> dict[str, Any]:
    path = Path(source) / "tokenizer_config.json"
    if not Path(source).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, "tokenizer_config.json", revision=revision))
        except Exception:  # noqa: BLE001 - no tokenizer config reachable: from_pretrained reports it
            return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# -- converter -------------------------------------------------------------------------------------------------------
#: Files copied beside the weights (tokenizer, generation settings, chat template); never ``*.py``.
_COPY_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
_SKIP_FILES = {"config.json", "model.safetensors.index.json"}


def _weight_files(src: Path) -> tuple[list[str], dict[str, Any] | None]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        return sorted(set(data["weight_map"].values())), data
    if (src / "model.safetensors").is_file():
        return ["model.safetensors"], None
    if any(src.glob("*.bin")) or any(src.glob("*.pt")):
        raise NativeFormatError(f"{src} holds pickle weights (*.bin / *.pt) only; this toolkit loads safetensors "
                                "only. Download the checkpoint's *.safetensors files.")
    raise NativeFormatError(f"{src}: no model.safetensors or model.safetensors.index.json.")


def _clean_tokenizer_config(path: Path) -> None:
    data = json.loads(path.read_text())
    data.pop("auto_map", None)
    if data.get("tokenizer_class") and _tokenizer_class(data["tokenizer_class"]) is None:
        data["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def convert_checkpoint(src: str | Path, dst: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the native checkpoint of a released LLaDA / Dream folder ``src`` into ``dst``.

    Weights are streamed shard by shard (the released sharding is kept; only names change, values and dtype
    stay bit-identical), ``config.json`` becomes the native config (no ``auto_map``), and the tokenizer /
    generation files are copied with ``auto_map`` removed. Returns a summary (format, tensors, shards).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise NativeFormatError(f"{src}: no config.json; point at a downloaded LLaDA or Dream checkpoint folder.")
    raw = json.loads(config_path.read_text())
    fmt = released_format(raw)
    if fmt is None:
        raise NativeFormatError(f"{src}: model_type={raw.get('model_type')!r} is neither LLaDA ('llada') nor Dream "
                                "('Dream'); only those two released formats are converted.")
    config = native_config(raw)
    files, index = _weight_files(src)
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise NativeFormatError(f"{dst} exists and is not empty; choose another folder or pass --overwrite.")
        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)

    weight_map: dict[str, str] = {}
    total_size = 0
    for name in files:
        tensors = {}
        with safe_open(src / name, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                if key.endswith("rotary_emb.inv_freq"):  # a buffer some exports save; recomputed from the config
                    continue
                tensors[native_name(key, fmt)] = f.get_tensor(key)
        for key, tensor in tensors.items():
            weight_map[key] = name
            total_size += tensor.numel() * tensor.element_size()
        save_file(tensors, str(dst / name), metadata={"format": "pt"})
    if index is not None or len(files) > 1:
        (dst / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    config.save_pretrained(dst)
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix in _COPY_SUFFIXES and path.name not in _SKIP_FILES:
            shutil.copy2(path, dst / path.name)
    if (dst / "tokenizer_config.json").is_file():
        _clean_tokenizer_config(dst / "tokenizer_config.json")
    return {"format": fmt, "architecture": config.architectures[0], "tensors": len(weight_map),
            "shards": len(files), "bytes": total_size, "dst": str(dst)}


#: What a Hub download for the converter fetches: weights as safetensors, configs, tokenizer files; never code.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def checkpoint_folder(ref: str, revision: str | None = None) -> Path:
    """A local folder for ``ref``: the folder itself, or a Hub id / registry alias downloaded without any
    ``*.py`` file (so no remote code reaches the disk)."""
    from cmikit.harness.models import resolve_model_ref

    resolved = resolve_model_ref(ref)
    if resolved.kind == "folder":
        return Path(resolved.path)
    if resolved.kind != "hub":
        raise NativeFormatError(f"{ref}: convert takes a LLaDA / Dream checkpoint folder, alias or Hub id.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved.path, revision=revision, allow_patterns=DOWNLOAD_PATTERNS))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo: one message
        raise NativeFormatError(f"Could not download {resolved.path}: {err}. Without Hub access, download the "
                                "checkpoint elsewhere and pass its folder.") from err
