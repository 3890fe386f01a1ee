"""The transformers plugin on the shipped tiny DLM: every documented call form gives the loop's result."""

from __future__ import annotations

import itertools

import pytest
import torch

from cmikit.decoding import DiffusionGenerationConfig, DiffusionOutput, generate
from cmikit.decoding.plugin import CUSTOM_GENERATE_DIR, diffusion_generate, resolve_generate_options
from cmikit.harness.errors import ConfigError


@pytest.fixture(scope="module")
def tiny():
    from cmikit.decoding.tiny_dlm import encode_problems, load_tiny_dlm

    torch.set_num_threads(1)
    model, tok, task = load_tiny_dlm(train_if_missing=False, progress=False)
    prompts, _ = encode_problems(task.problems(2, seed=7), tok, task.gen_length)
    return model, prompts, task.gen_length


ROUTES = ["callable", "folder"]
CONFIG_KINDS = ["object", "dict"]
LENGTH_SOURCES = ["max_new_tokens", "generation_config", "neither"]


def call(model, ids, route, config_kind, length_source, return_dict, n, extra=None):
    from transformers import GenerationConfig

    fields = {"strategy": "threshold", **(extra or {})}
    if length_source == "neither":
        fields["gen_length"] = n
    diffusion_config = DiffusionGenerationConfig(**fields) if config_kind == "object" else fields
    kwargs = {"diffusion_config": diffusion_config}
    if route == "callable":
        kwargs["custom_generate"] = diffusion_generate
    else:
        kwargs.update(custom_generate=CUSTOM_GENERATE_DIR, trust_remote_code=True)
    if length_source == "max_new_tokens":
        kwargs["max_new_tokens"] = n
        if return_dict:
            kwargs["return_dict_in_generate"] = True
    elif length_source == "generation_config":
        kwargs["generation_config"] = GenerationConfig(max_new_tokens=n, return_dict_in_generate=return_dict)
    elif return_dict:
        kwargs["return_dict_in_generate"] = True
    return model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)


@pytest.mark.parametrize("route,config_kind,length_source,return_dict",
                         list(itertools.product(ROUTES, CONFIG_KINDS, LENGTH_SOURCES, [False, True])))
def test_every_call_form_matches_the_loop(tiny, route, config_kind, length_source, return_dict):
    model, ids, n = tiny
    expected = generate(model, ids, DiffusionGenerationConfig(gen_length=n, strategy="threshold"))
    out = call(model, ids, route, config_kind, length_source, return_dict, n)
    if return_dict:
        assert isinstance(out, DiffusionOutput)
        assert out.nfe == expected.nfe
        sequences = out.sequences
    else:
        assert torch.is_tensor(out)
        sequences = out
    assert sequences.shape == (ids.shape[0], ids.shape[1] + n)  # max_new_tokens was honoured (not 128)
    assert sequences.tolist() == expected.sequences.tolist()


@pytest.mark.parametrize("route", ROUTES)
def test_without_any_length_the_default_overflows_the_context(tiny, route):
    model, ids, _ = tiny
    kwargs = ({"custom_generate": diffusion_generate} if route == "callable"
              else {"custom_generate": CUSTOM_GENERATE_DIR, "trust_remote_code": True})
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model.generate(ids, diffusion_config={"strategy": "threshold"}, **kwargs)


@pytest.mark.parametrize("route", ROUTES)
def test_sampling_fields_carry_over_and_torch_manual_seed_reproduces(tiny, route):
    model, ids, n = tiny
    kwargs = ({"custom_generate": diffusion_generate} if route == "callable"
              else {"custom_generate": CUSTOM_GENERATE_DIR, "trust_remote_code": True})
    common = dict(diffusion_config={"strategy": "low_confidence"}, max_new_tokens=n, do_sample=True,
                  temperature=5.0, top_k=None, **kwargs)
    torch.manual_seed(3)
    a = model.generate(ids, **common)
    torch.manual_seed(3)
    b = model.generate(ids, **common)
    assert a.tolist() == b.tolist()
    torch.manual_seed(4)
    c = model.generate(ids, **common)
    greedy = model.generate(ids, diffusion_config={"strategy": "low_confidence"}, max_new_tokens=n, **kwargs)
    assert c.tolist() != a.tolist() or greedy.tolist() != a.tolist()  # temperature 5 is not greedy
    # The same seed through the loop directly (global RNG, temperature 5) gives the same tokens.
    torch.manual_seed(3)
    direct = generate(model, ids, DiffusionGenerationConfig(gen_length=n, strategy="low_confidence", temperature=5.0))
    assert direct.sequences.tolist() == a.tolist()


def test_resolution_rules(tiny):
    from transformers import GenerationConfig

    model, _, _ = tiny
    merged = model._prepare_generation_config(None, max_new_tokens=8, do_sample=True, temperature=0.7,
                                              top_p=0.9)[0]
    config, return_dict = resolve_generate_options(model, {"strategy": "ccd", "temperature": 0.0}, merged)
    assert (config.gen_length, config.temperature, config.top_p, return_dict) == (8, 0.0, 0.9, False)
    # greedy by default: GenerationConfig's temperature 1.0 default does not leak in
    config, _ = resolve_generate_options(model, {}, model._prepare_generation_config(None, max_new_tokens=8)[0])
    assert config.temperature == 0.0
    with pytest.raises(ConfigError, match="max_new_tokens=8 conflicts"):
        resolve_generate_options(model, {"gen_length": 16}, merged)
    with pytest.raises(ConfigError, match="num_beams=2"):
        resolve_generate_options(model, {}, model._prepare_generation_config(GenerationConfig(num_beams=2))[0])
    with pytest.warns(UserWarning, match="repetition_penalty"):
        resolve_generate_options(model, {"gen_length": 8},
                                 model._prepare_generation_config(None, repetition_penalty=1.3)[0])
