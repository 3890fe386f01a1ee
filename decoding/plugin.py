"""``model.generate(custom_generate=...)`` integration: the same loop behind transformers' ``generate``.

Two ways in, both ending in :func:`decoding.generate` with options resolved by one function,
:func:`resolve_generate_options`:

* a callable: ``model.generate(input_ids, custom_generate=diffusion_generate, diffusion_config=cfg)``;
  transformers prepares the inputs (attention mask, generation config) and calls it;
* a folder with ``custom_generate/generate.py`` (this package's ``decoding/custom_generate``, publishable
  to the Hub as is): ``model.generate(..., custom_generate=CUSTOM_GENERATE_DIR, trust_remote_code=True)``;
  transformers hands every ``generate`` argument over as is, and the entry merges them into a
  ``GenerationConfig`` exactly as transformers does for the callable (``model._prepare_generation_config``).

``diffusion_config`` may be a :class:`~cmikit.decoding.config.DiffusionGenerationConfig` or a dict of its fields;
both behave the same: a field counts as *set* when it is a dict key, or, for an object, when it differs
from the dataclass default. Set fields win over anything taken from the ``GenerationConfig``.

``GenerationConfig`` fields, after transformers' merge of the call's keyword arguments, the call's
``generation_config`` and ``model.generation_config``:

=============================  ====================================================================================
honoured                       how
=============================  ====================================================================================
``max_new_tokens``             ``gen_length`` (when ``diffusion_config`` does not set it; a different ``gen_length``
                               there and a ``max_new_tokens`` passed in the call is a :class:`ConfigError`)
``return_dict_in_generate``    return the :class:`~cmikit.decoding.loop.DiffusionOutput` instead of the sequences
``do_sample``                  ``True``: ``temperature``, ``top_p`` (< 1) and ``top_k`` carry over (unless
                               ``diffusion_config`` sets them); otherwise decoding is greedy (temperature 0)
``num_beams``,                 must be 1 (or unset): anything else is a :class:`ConfigError`
``num_return_sequences``
=============================  ====================================================================================

Ignored: ``max_length`` / ``min_length`` / ``min_new_tokens`` (a diffusion canvas has a fixed length: use
``max_new_tokens``), ``eos_token_id`` / ``pad_token_id`` (read from the model config and tokenizer by
:func:`decoding.adapt`), logits processors, stopping criteria, penalties and ``output_*`` flags. Those a
user would expect to act (penalties, ``no_repeat_ngram_size``, ``bad_words_ids``, ``stop_strings``,
``min_new_tokens``, ``output_scores`` / ``output_logits``) raise a ``UserWarning`` when passed in the call.
There is no seed field in ``GenerationConfig``: ``torch.manual_seed(s)`` before the call makes sampling
reproducible (with ``diffusion_config`` ``seed`` unset the loop draws from torch's global generator), or set
``diffusion_config={"seed": s}`` for the loop's own generator, which the global seed does not affect.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import torch

from cmikit.decoding.config import DiffusionGenerationConfig
from cmikit.decoding.loop import DiffusionOutput, generate
from cmikit.harness.errors import ConfigError

#: The folder to pass as ``custom_generate=`` (it holds ``custom_generate/generate.py``).
CUSTOM_GENERATE_DIR = str(Path(__file__).parent)

#: GenerationConfig fields that act in autoregressive ``generate`` and are ignored here, with a warning.
WARN_IGNORED = ("repetition_penalty", "no_repeat_ngram_size", "bad_words_ids", "stop_strings", "min_new_tokens",
                "output_scores", "output_logits", "encoder_repetition_penalty", "sequence_bias")


def _set_fields(diffusion_config: DiffusionGenerationConfig | dict[str, Any] | None) -> dict[str, Any]:
    """The fields the user set: a dict's keys, or an object's fields that differ from the defaults."""
    if diffusion_config is None:
        return {}
    if isinstance(diffusion_config, dict):
        return dict(diffusion_config)
    if isinstance(diffusion_config, DiffusionGenerationConfig):
        default = DiffusionGenerationConfig()
        return {f.name: getattr(diffusion_config, f.name) for f in dataclasses.fields(diffusion_config)
                if getattr(diffusion_config, f.name) != getattr(default, f.name)}
    raise ConfigError(f"diffusion_config must be a DiffusionGenerationConfig or a dict, got "
                      f"{type(diffusion_config).__name__}")


def merged_generation_config(model, generation_config=None, **kwargs):
    """``(GenerationConfig, leftover kwargs)`` as transformers builds it for a callable ``custom_generate``:
    the call's ``generation_config`` (or a fresh one), then ``model.generation_config`` and the global
    defaults for unset fields, then the call's keyword arguments."""
    prepare = getattr(model, "_prepare_generation_config", None)
    if prepare is not None:
        return prepare(generation_config, **kwargs)
    from transformers import GenerationConfig

    merged = copy.deepcopy(generation_config or getattr(model, "generation_config", None) or GenerationConfig())
    return merged, merged.update(**kwargs)


def resolve_generate_options(model, diffusion_config: DiffusionGenerationConfig | dict[str, Any] | None = None,
                             generation_config=None) -> tuple[DiffusionGenerationConfig, bool]:
    """``(DiffusionGenerationConfig, return_dict_in_generate)`` from a ``diffusion_config`` and the *merged*
    ``GenerationConfig`` (see the module docstring for what is honoured). Both plugin routes call this."""
    fields = _set_fields(diffusion_config)
    gc = generation_config
    if gc is None:
        gc = merged_generation_config(model)[0]
    try:
        baseline = merged_generation_config(model)[0]
    except Exception:  # noqa: BLE001 - a model without a usable generation config: nothing is a default
        baseline = None

    def from_call(name: str) -> bool:
        value = getattr(gc, name, None)
        return value is not None and (baseline is None or value != getattr(baseline, name, None))

    for name in ("num_beams", "num_return_sequences"):
        value = getattr(gc, name, None)
        if value not in (None, 1):
            raise ConfigError(f"{name}={value} is not supported by diffusion decoding (one canvas per prompt); "
                              f"leave it at 1")
    ignored = [name for name in WARN_IGNORED if from_call(name)]
    if ignored:
        warnings.warn(f"custom_generate (diffusion): GenerationConfig field(s) {ignored} have no effect on a "
                      "diffusion canvas and are ignored", UserWarning, stacklevel=3)

    max_new = getattr(gc, "max_new_tokens", None)
    if max_new is not None:
        if "gen_length" not in fields:
            fields["gen_length"] = int(max_new)
        elif fields["gen_length"] != max_new and from_call("max_new_tokens"):
            raise ConfigError(f"max_new_tokens={max_new} conflicts with diffusion_config gen_length="
                              f"{fields['gen_length']}; pass one of them")
    if getattr(gc, "do_sample", None):
        temperature = getattr(gc, "temperature", None)
        top_p = getattr(gc, "top_p", None)
        top_k = getattr(gc, "top_k", None)
        fields.setdefault("temperature", 1.0 if temperature is None else float(temperature))
        fields.setdefault("top_p", top_p if top_p is not None and top_p < 1 else None)
        fields.setdefault("top_k", top_k if top_k else None)
    try:
        config = DiffusionGenerationConfig(**fields)
    except TypeError as err:
        raise ConfigError(f"diffusion_config: {err}") from None
    return config, bool(getattr(gc, "return_dict_in_generate", False))


def resolve_config(diffusion_config: DiffusionGenerationConfig | dict[str, Any] | None,
                   generation_config=None) -> DiffusionGenerationConfig:
    """Backwards-compatible wrapper: the :class:`DiffusionGenerationConfig` part of
    :func:`resolve_generate_options` for a model-less call (``generation_config`` already merged)."""
    from transformers import GenerationConfig

    return resolve_generate_options(None, diffusion_config, generation_config or GenerationConfig())[0]


def run_custom_generate(model, input_ids: torch.Tensor, diffusion_config, generation_config,
                        attention_mask: torch.Tensor | None = None,
                        diffusion_tokenizer=None) -> torch.LongTensor | DiffusionOutput:
    """The shared body of both routes: resolve the options, run the loop, shape the return value."""
    config, return_dict = resolve_generate_options(model, diffusion_config, generation_config)
    out = generate(model, input_ids, config, attention_mask=attention_mask, tokenizer=diffusion_tokenizer)
    return out if return_dict else out.sequences


def diffusion_generate(
    model,
    input_ids: torch.LongTensor,
    logits_processor=None,
    stopping_criteria=None,
    generation_config=None,
    diffusion_config: DiffusionGenerationConfig | dict[str, Any] | None = None,
    diffusion_tokenizer=None,
    **model_kwargs,
) -> torch.LongTensor | DiffusionOutput:
    """Callable for ``model.generate(custom_generate=diffusion_generate, diffusion_config=...)``.

    Returns the sequences, or the full :class:`~cmikit.decoding.loop.DiffusionOutput` when
    ``return_dict_in_generate=True``. Options are resolved by :func:`resolve_generate_options` (see the module
    docstring for the ``GenerationConfig`` fields honoured and ignored). Logits processors and stopping
    criteria of autoregressive generation do not apply to a diffusion canvas and are ignored.
    """
    return run_custom_generate(model, input_ids, diffusion_config, generation_config,
                               attention_mask=model_kwargs.get("attention_mask"),
                               diffusion_tokenizer=diffusion_tokenizer)
