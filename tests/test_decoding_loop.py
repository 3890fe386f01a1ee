"""The decoding loop and adapters on tiny random models: batching, logit shift, hooks, errors, plugin."""

from __future__ import annotations

import pytest
import torch

from cmikit.decoding import AdapterError, DiffusionGenerationConfig, adapt, generate
from cmikit.decoding.plugin import CUSTOM_GENERATE_DIR, diffusion_generate
from cmikit.harness.testing import left_pad, tiny_causal_lm, tiny_dream_like, tiny_llada_like, tiny_tokenizer


@pytest.fixture(scope="module")
def llada():
    model = tiny_llada_like()
    with torch.no_grad():  # peaked predictions: padding-level float noise cannot reorder confidences
        model.lm_head.weight.mul_(40)
    return model


PROMPTS = [[5, 9, 17, 23, 4, 8], [11, 3], [40, 41, 42, 43]]


@pytest.mark.parametrize("strategy", ["low_confidence", "entropy", "threshold", "entropy_bound", "ccd", "ccd_marginal"])
def test_batch_of_different_lengths_equals_each_prompt_alone(llada, strategy):
    config = DiffusionGenerationConfig(gen_length=12, block_length=6, steps=12, strategy=strategy, threshold=0.05,
                                       entropy_bound=2.0, ccd_entropy_threshold=3.5, warmup_steps=2)
    ids, mask = left_pad(PROMPTS, pad_id=0)
    batched = generate(llada, ids, config, attention_mask=mask)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(llada, torch.tensor([prompt]), config)
        assert batched.generated[row].tolist() == alone.generated[0].tolist()
        assert int(batched.nfe_per_row[row]) == alone.nfe


class HandShifted(torch.nn.Module):
    """A Dream-like model whose logits are shifted by hand, presented as an unshifted (LLaDA-style) model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask).logits
        return type("Out", (), {"logits": torch.cat([logits[:, :1], logits[:, :-1]], dim=1)})()


@pytest.mark.parametrize("strategy", ["low_confidence", "entropy", "ccd"])
def test_dream_shift_equals_hand_shifted_llada_convention(strategy):
    dream = tiny_dream_like(seed=1)
    auto = adapt(dream)
    assert auto.shift_logits and auto.kind == "bidirectional"
    manual = adapt(HandShifted(dream), mask_token_id=dream.config.mask_token_id, shift_logits=False)
    ids, mask = left_pad(PROMPTS[:2], pad_id=0)
    config = DiffusionGenerationConfig(gen_length=8, strategy=strategy)
    a = generate(auto, ids, config, attention_mask=mask)
    b = generate(manual, ids, config, attention_mask=mask)
    assert a.sequences.tolist() == b.sequences.tolist()
    # ... and without the shift the decode differs (the test can tell the conventions apart).
    unshifted = generate(adapt(dream, shift_logits=False), ids, config, attention_mask=mask)
    assert unshifted.sequences.tolist() != a.sequences.tolist()


def test_seeded_sampling_is_deterministic(llada):
    ids = torch.tensor([PROMPTS[0]])
    config = DiffusionGenerationConfig(gen_length=8, temperature=1.0, seed=7)
    a, b = generate(llada, ids, config), generate(llada, ids, config)
    assert a.sequences.tolist() == b.sequences.tolist()
    other = [generate(llada, ids, config, seed=s).sequences.tolist() for s in range(4)]
    assert any(o != a.sequences.tolist() for o in other)


def test_hooks_history_and_counts(llada):
    seen = []

    def logits_hook(step, x, logits):
        seen.append(("logits", step))
        return None

    def tokens_hook(step, x, logits):
        seen.append(("tokens", step))
        return x

    out = generate(llada, torch.tensor([PROMPTS[1]]), DiffusionGenerationConfig(gen_length=6, steps=3, output_history=True),
                   logits_hook=logits_hook, tokens_hook=tokens_hook)
    assert out.nfe == 3 and len(out.history) == 3
    assert seen == [("logits", 0), ("tokens", 0), ("logits", 1), ("tokens", 1), ("logits", 2), ("tokens", 2)]
    assert out.commits_per_step.sum().item() == 6
    assert (out.generated != llada.config.mask_token_id).all()


def test_classifier_free_guidance_runs_one_doubled_pass_per_step(llada):
    out = generate(llada, torch.tensor([PROMPTS[0]]), DiffusionGenerationConfig(gen_length=4, steps=4, cfg_scale=1.5))
    assert out.nfe == 4 and (out.generated != llada.config.mask_token_id).all()


def test_eos_suppression(llada):
    eos = llada.config.eos_token_id
    out = generate(llada, torch.tensor([PROMPTS[0]]), DiffusionGenerationConfig(gen_length=16, suppress_eos=True),
                   logits_hook=lambda s, x, logits: logits.index_fill(-1, torch.tensor([eos]), 50.0))
    assert eos not in out.generated[0].tolist()


def test_bert_style_masked_lm_and_opt_in_causal_model():
    from transformers import BertConfig, BertForMaskedLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=64)).eval()
    adapter = adapt(bert, tok)
    assert adapter.kind == "masked-lm" and adapter.mask_token_id == tok.mask_token_id and not adapter.shift_logits
    out = generate(adapter, torch.tensor([[10, 11, 12]]), DiffusionGenerationConfig(gen_length=4, strategy="ccd"))
    assert out.sequences.shape == (1, 7)

    causal = tiny_causal_lm()
    adapter = adapt(causal, tok, bidirectional=True)
    assert adapter.kind == "causal-made-bidirectional" and adapter.eos_token_ids == [tok.eos_token_id]
    # Bidirectional: changing the last token changes the logits at position 0.
    x = torch.tensor([[10, 11, 12, 13]])
    y = x.clone()
    y[0, -1] = 20
    assert not torch.allclose(adapter.logits(x, None)[0, 0], adapter.logits(y, None)[0, 0])


# ---- bad inputs -------------------------------------------------------------------------------------------
def test_gen_length_not_divisible_by_block_length():
    with pytest.raises(ValueError, match="not divisible by block_length"):
        DiffusionGenerationConfig(gen_length=10, block_length=4)


def test_steps_not_divisible_by_blocks():
    with pytest.raises(ValueError, match="not divisible by the number of blocks"):
        DiffusionGenerationConfig(gen_length=8, block_length=4, steps=5)


def test_no_mask_token_id():
    with pytest.raises(AdapterError, match="No mask token id"):
        adapt(tiny_causal_lm(), bidirectional=True)


def test_causal_only_model_without_adapter():
    with pytest.raises(AdapterError, match="causal-only"):
        generate(tiny_causal_lm(), torch.tensor([[5, 6]]), DiffusionGenerationConfig(gen_length=4))


def test_prompt_longer_than_context(llada):
    limit = llada.config.max_position_embeddings
    with pytest.raises(ValueError, match="exceeds the model's context"):
        generate(llada, torch.full((1, limit - 2), 5), DiffusionGenerationConfig(gen_length=4))


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.5])
def test_threshold_outside_unit_interval(tau):
    with pytest.raises(ValueError, match=r"threshold.*\(0, 1\]"):
        DiffusionGenerationConfig(strategy="threshold", threshold=tau)


def test_unknown_strategy_and_field():
    with pytest.raises(ValueError, match="choose one of"):
        DiffusionGenerationConfig(strategy="greedy")
    with pytest.raises(ValueError, match="ccd_tokens_from"):
        DiffusionGenerationConfig(ccd_tokens_from="average")
    with pytest.raises(TypeError, match="Unknown DiffusionGenerationConfig field"):
        DiffusionGenerationConfig().update(stepz=3)


# ---- transformers plugin ------------------------------------------------------------------------------------
def test_custom_generate_callable_and_folder_match_the_loop(llada):
    ids = torch.tensor([PROMPTS[0], PROMPTS[0]])
    config = DiffusionGenerationConfig(gen_length=8, strategy="ccd")
    expected = generate(llada, ids, config).sequences
    via_callable = llada.generate(ids, attention_mask=torch.ones_like(ids), custom_generate=diffusion_generate,
                                  diffusion_config=config)
    assert via_callable.tolist() == expected.tolist()
    via_dict = llada.generate(ids, custom_generate=diffusion_generate, diffusion_config={"strategy": "ccd"},
                              max_new_tokens=8)
    assert via_dict.tolist() == expected.tolist()
    via_folder = llada.generate(ids, custom_generate=CUSTOM_GENERATE_DIR, trust_remote_code=True,
                                diffusion_config=config)
    assert via_folder.tolist() == expected.tolist()


@pytest.mark.parametrize("scope,banned", [("eos", {"eos"}), ("eos_eot", {"eos", "eot"})])
def test_suppress_eos_scope_eos_only_like_llada_or_eos_and_eot(llada, scope, banned):
    from cmikit.decoding.adapters import DiffusionModelAdapter

    eos, eot = llada.config.eos_token_id, 40
    adapter = DiffusionModelAdapter(llada, llada.config.mask_token_id, eos_token_ids=sorted({eos, eot}),
                                    eos_only_token_ids=[eos])
    # The hook makes EOS at even positions and EoT at odd ones the overwhelming prediction.
    def hook(step, x, logits):
        logits = logits.clone()
        logits[:, 0::2, eos] = 50.0
        logits[:, 1::2, eot] = 50.0
        return logits

    out = generate(adapter, torch.tensor([PROMPTS[0]]), DiffusionGenerationConfig(
        gen_length=16, suppress_eos=True, suppress_eos_scope=scope), logits_hook=hook)
    generated = set(out.generated[0].tolist())
    assert (eos in generated) is False
    assert (eot in generated) is ("eot" not in banned)


def test_adapter_eos_only_ids_come_from_the_model_config(llada):
    tok = tiny_tokenizer()
    adapter = adapt(llada, tok)
    assert adapter.eos_only_token_ids == [llada.config.eos_token_id]
    assert set(adapter.eos_only_token_ids) <= set(adapter.eos_token_ids)
