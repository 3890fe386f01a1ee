"""``model.generate(custom_generate=...)`` integration: the same loop behind transformers' ``generate``.

Two ways in, both ending in :func:`decoding.generate`:

* a callable: ``model.generate(input_ids, custom_generate=diffusion_generate, diffusion_config=cfg)``;
  transformers prepares the inputs (attention mask, generation config) and calls it;
* a folder with ``custom_generate/generate.py`` (this package's ``decoding/custom_generate``, publishable
  to the Hub as is): ``model.generate(..., custom_generate=path_or_repo, trust_remote_code=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from decoding.config import DiffusionGenerationConfig
from decoding.loop import DiffusionOutput, generate

#: The folder to pass as ``custom_generate=`` (it holds ``custom_generate/generate.py``).
CUSTOM_GENERATE_DIR = str(Path(__file__).parent)


def resolve_config(diffusion_config: DiffusionGenerationConfig | dict[str, Any] | None,
                   generation_config=None) -> DiffusionGenerationConfig:
    """A config from an object or a dict; ``gen_length`` defaults to ``generation_config.max_new_tokens``."""
    if isinstance(diffusion_config, DiffusionGenerationConfig):
        return diffusion_config
    fields = dict(diffusion_config or {})
    max_new = getattr(generation_config, "max_new_tokens", None)
    if "gen_length" not in fields and max_new:
        fields["gen_length"] = int(max_new)
    return DiffusionGenerationConfig(**fields)


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

    Returns the sequences, or the full :class:`~decoding.loop.DiffusionOutput` when
    ``return_dict_in_generate=True``. Logits processors and stopping criteria of autoregressive generation
    do not apply to a diffusion canvas and are ignored.
    """
    config = resolve_config(diffusion_config, generation_config)
    out = generate(model, input_ids, config, attention_mask=model_kwargs.get("attention_mask"),
                   tokenizer=diffusion_tokenizer)
    if generation_config is not None and getattr(generation_config, "return_dict_in_generate", False):
        return out
    return out.sequences
