"""LM backends: one interface (:class:`LMBackend`), a transformers implementation and an optional vLLM one."""

from __future__ import annotations

from typing import Any

from cmikit.harness.backends.base import (
    BackendError,
    LMBackend,
    Prompt,
    SamplingParams,
    first_token_ids,
    render_prompt,
    truncate_at_stop,
)
from cmikit.harness.backends.transformers_backend import TransformersBackend
from cmikit.harness.backends.vllm_backend import VLLMBackend

BACKENDS = ("transformers", "vllm")


def make_backend(kind: str, model: str, **kwargs: Any) -> LMBackend:
    """Build a backend by name for a model reference (alias, Hub id, folder or .gguf)."""
    if kind == "transformers":
        return TransformersBackend.from_ref(model, **kwargs)
    if kind == "vllm":
        from cmikit.harness.models import resolve_model_ref

        resolved = resolve_model_ref(model)
        if resolved.kind == "embedded":
            from cmikit.harness.embedded import prepare_embedded_model

            path = str(prepare_embedded_model())
        else:
            path = resolved.path
        return VLLMBackend(model=path, **kwargs)
    raise BackendError(f"Unknown backend {kind!r}; allowed: {', '.join(BACKENDS)}.")


__all__ = [
    "BACKENDS",
    "BackendError",
    "LMBackend",
    "Prompt",
    "SamplingParams",
    "TransformersBackend",
    "VLLMBackend",
    "first_token_ids",
    "make_backend",
    "render_prompt",
    "truncate_at_stop",
]
